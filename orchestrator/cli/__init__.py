"""The `orchestrator` command: the composition root for every subcommand.

Each subcommand builds `Settings` once, resolves the database (DATABASE_URL
or the shared embedded server) and runs one Trio program. Expected failures
(bad input, unknown ids, an unreachable database) print one line on stderr
and exit 2; `audit` exits 1 when it finds a violation. The subcommands live
in `_ledger`, `_jobs` and `_processes`; what they share, in `_command`.
"""

from ._main import build_parser as build_parser
from ._main import main as main

__all__ = ["build_parser", "main"]
