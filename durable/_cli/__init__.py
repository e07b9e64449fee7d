"""The ``durable`` command: run a worker; list, read and steer workflows.

Every command but ``worker`` and ``migrate`` runs in one of two modes. With ``--url``
(or ``$DURABLE_URL``) it calls a running server's HTTP API (`durable.server`) through
the standard library's urllib; otherwise it opens the store itself: a LevelDB one
(``--store``, ``$DURABLE_STORE`` or ``./.durable``), which works only while no worker
holds it, or a PostgreSQL one (``--postgres``, ``--pg-store``), which workers share.
Both modes print the same: text for people and, with ``--json``, exactly the bodies
the HTTP API answers with (the shapes of `durable._json`). ``migrate`` creates or
migrates a PostgreSQL store's schema.

Rule: a failure prints one ``durable: error: ...`` line to stderr that says what to do,
and exits with an `ExitCode` (the table in docs/cli.md); only a bug shows a traceback.

The modules, from the top: `_parser` (`main` and the arguments) runs `_worker` (the
``worker`` command) or `_commands` (the others), which call `_store` (store mode) or
`_http` (server mode) and print through `_render`; `_location` picks the store that
the options name, `_app` imports an app's workflows, and `_errors` holds the exit
codes.
"""

from __future__ import annotations

from ._app import load_workflows
from ._commands import step_path
from ._errors import ExitCode
from ._parser import build_parser, main

__all__ = ["ExitCode", "build_parser", "load_workflows", "main", "step_path"]
