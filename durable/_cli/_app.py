"""An app: the workflows that ``MODULE:OBJECT`` names, for ``worker`` and ``start --app``.

Rule: the current directory comes first on ``sys.path``, and an app that cannot be
imported or holds no workflow, or two under one name, is a usage error (exit 2).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path

from .._workflow import Workflow
from ._errors import CommandError, ExitCode


def load_workflows(spec: str) -> list[Workflow]:
    """Import the workflows ``MODULE:OBJECT`` names (the current directory first).

    OBJECT is a `Workflow`, an async function, or a list (any iterable) or dict of
    them; a dict's keys name the plain functions it holds.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CommandError(
            ExitCode.USAGE,
            f"expected MODULE:OBJECT such as myapp.workflows:order, not {spec!r}",
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:  # as uvicorn does: the app is in the current directory
        sys.path.insert(0, cwd)
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(
            ExitCode.USAGE,
            f"cannot import {module_name!r} ({exc}); run durable from the directory "
            "that holds it, or add that directory to PYTHONPATH",
        ) from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(
                ExitCode.USAGE, f"{module_name!r} has no attribute {attribute!r}"
            ) from None
    items: list[object] = []
    if isinstance(obj, Workflow) or callable(obj):
        items = [obj]
    elif isinstance(obj, dict):
        items = [_named(key, value, spec) for key, value in obj.items()]
    elif isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
        items = list(obj)
    workflows: dict[str, Workflow] = {}
    for item in items:
        if isinstance(item, Workflow):
            workflow = item
        elif inspect.iscoroutinefunction(item):
            workflow = Workflow(item.__name__, item)
        else:
            raise CommandError(
                ExitCode.USAGE,
                f"{spec} holds {item!r}, which is not a @durable.workflow or an "
                "async function",
            )
        if workflows.setdefault(workflow.name, workflow).fn is not workflow.fn:
            raise CommandError(
                ExitCode.USAGE,
                f"{spec} holds two workflows named {workflow.name!r}; rename one "
                "with @durable.workflow(name=...)",
            )
    if not workflows:
        raise CommandError(ExitCode.USAGE, f"{spec} holds no workflows")
    return list(workflows.values())


def _named(key: object, value: object, spec: str) -> object:
    """A dict item of an app: the value, named by the key."""
    if not isinstance(key, str) or not key:
        raise CommandError(ExitCode.USAGE, f"{spec}: {key!r} is not a workflow name")
    if isinstance(value, Workflow) and value.name != key:
        raise CommandError(
            ExitCode.USAGE,
            f"{spec}: the key {key!r} holds the workflow named {value.name!r}; use "
            "its name as the key",
        )
    if not inspect.iscoroutinefunction(value):
        return value  # a Workflow, or refused by the caller
    return Workflow(key, value)
