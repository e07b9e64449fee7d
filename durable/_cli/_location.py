"""Which store a command opens: a LevelDB directory, or a store in PostgreSQL.

``--store PATH`` names a LevelDB store. ``--postgres DSN`` (else ``$DURABLE_POSTGRES``)
names a PostgreSQL database, and ``--pg-store NAME`` (else ``$DURABLE_PG_STORE``, else
the driver's default) the store in it. An option wins over the environment, and
``$DURABLE_POSTGRES`` over ``$DURABLE_STORE`` (else ``./.durable``).

A LevelDB store is held by one process at a time; a PostgreSQL store is shared, so
commands open it while workers run, and workers on it take leases.

Rule: the PostgreSQL driver (the ``durable[postgres]`` extra, psycopg) is imported only
once a command picks a PostgreSQL store, so that every other command runs without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final, TypeAlias, TypeVar

import attrs

from .._drivers import LevelDBDriver, default_store_path
from .._errors import DurableError
from ._errors import CommandError, ExitCode, code_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._drivers import Driver

T = TypeVar("T")

POSTGRES_ENV_VAR: Final = "DURABLE_POSTGRES"
PG_STORE_ENV_VAR: Final = "DURABLE_PG_STORE"
DEFAULT_SHARED_LEASE: Final = 30.0  # seconds; a worker's lease on a shared store


@attrs.frozen
class LevelDBStore:
    """A LevelDB store: a directory that one process at a time holds."""

    path: Path
    shared: ClassVar[bool] = False  # a worker holds it: commands need --url then

    def __str__(self) -> str:
        return f"the store at {self.path}"

    def check_exists(self) -> None:
        """Refuse (exit 5) when there is no store at the path: commands create none."""
        if not (self.path / "CURRENT").is_file():  # LevelDB's own
            raise CommandError(
                ExitCode.UNAVAILABLE,
                f"no durable store at {self.path}; pass --store PATH or set "
                "$DURABLE_STORE, or reach a running worker with --url URL",
            )

    def open(self, *, listen: bool = True) -> Driver:
        """The store's driver; it holds the store until closed (*listen*: unused)."""
        return LevelDBDriver(self.path)


@attrs.frozen
class PostgresStore:
    """A store in a PostgreSQL database: a schema that many processes share."""

    dsn: str
    name: str
    shared: ClassVar[bool] = True  # workers take leases; commands open it alongside

    def __str__(self) -> str:
        return f"the PostgreSQL store {self.name!r}"

    def check_exists(self) -> None:
        """Refuse (exit 5) when the store has no schema: commands create none."""
        from .._drivers._postgres import read_store_version

        if self._call(read_store_version) is None:
            raise CommandError(
                ExitCode.UNAVAILABLE,
                f"there is no durable store {self.name!r} in that PostgreSQL "
                "database; check --postgres and --pg-store (or $DURABLE_POSTGRES and "
                "$DURABLE_PG_STORE), or create the store with `durable migrate` or "
                "a worker",
            )

    def migrate(self) -> tuple[int | None, int]:
        """Create or migrate the schema: the version before (None: none) and now."""
        from .._drivers._postgres import SCHEMA_VERSION, migrate_store

        return self._call(migrate_store), SCHEMA_VERSION

    def open(self, *, listen: bool = True) -> Driver:
        """The store's driver; it connects, and creates or migrates, when entered.

        Without *listen* it hears other processes' wake-ups only by polling, which
        suits a command that waits for none.
        """
        from .._drivers._postgres import PostgresDriver

        try:
            return PostgresDriver(self.dsn, store=self.name, listen=listen)
        except ValueError as exc:
            raise _usage(exc) from None

    def _call(self, fn: Callable[..., T]) -> T:
        """``fn(dsn, store=name)``, one of the driver's blocking schema functions."""
        try:
            return fn(self.dsn, store=self.name)
        except ValueError as exc:
            raise _usage(exc) from None
        except DurableError as exc:  # StorageError: unreachable, refused, newer
            raise CommandError(code_of(exc), str(exc), type(exc).__name__) from None


Location: TypeAlias = LevelDBStore | PostgresStore


def names_a_store(
    store: str | None, postgres: str | None, pg_store: str | None
) -> bool:
    """Whether the options name a store (which then wins over ``$DURABLE_URL``)."""
    return store is not None or postgres is not None or pg_store is not None


def choose_store(
    store: str | None, postgres: str | None, pg_store: str | None
) -> Location:
    """The store that ``--store``, ``--postgres`` and ``--pg-store`` name.

    Without them, ``$DURABLE_POSTGRES`` (with ``$DURABLE_PG_STORE``), else
    ``$DURABLE_STORE``, else ``./.durable``. Raises `CommandError`: ``--store`` with
    the PostgreSQL options is a usage error, and so is ``--pg-store`` without a DSN.
    """
    if store is not None and (postgres is not None or pg_store is not None):
        raise CommandError(
            ExitCode.USAGE,
            "pass --store PATH (LevelDB) or --postgres DSN (PostgreSQL), not both",
        )
    if store is not None:
        return LevelDBStore(Path(store))
    dsn = postgres if postgres is not None else os.environ.get(POSTGRES_ENV_VAR)
    if not dsn:
        if pg_store is not None:
            raise CommandError(
                ExitCode.USAGE,
                f"--pg-store names a store in PostgreSQL: add --postgres DSN or set "
                f"${POSTGRES_ENV_VAR}",
            )
        return LevelDBStore(default_store_path())
    default = _import_postgres()
    name = pg_store if pg_store is not None else os.environ.get(PG_STORE_ENV_VAR)
    return PostgresStore(dsn, name or default)


def _import_postgres() -> str:
    """Import the PostgreSQL driver (an optional extra); its default store name."""
    try:
        from .._drivers._postgres import DEFAULT_STORE
    except ModuleNotFoundError as exc:
        raise CommandError(
            ExitCode.UNAVAILABLE,
            f"a PostgreSQL store needs the PostgreSQL driver ({exc.name} is missing); "
            "install it with pip install 'durable[postgres]'",
        ) from None
    return DEFAULT_STORE


def _usage(exc: ValueError) -> CommandError:
    """A DSN or store name the driver refuses: fix the command line."""
    return CommandError(
        ExitCode.USAGE, f"{exc}; check --postgres and --pg-store", "ValueError"
    )
