"""The chaos soak, 30 seconds of it, as part of the suite.

`bench/soak.py` runs its own embedded Postgres, the simulator and the daemon as processes,
sends mixed traffic and kills the daemon and Postgres on a schedule. The money invariants
must hold at the end however the faults fell; what depends on load (how many upstream
successes arrived too late) is reported by the soak, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
KINDS = {"daemon SIGKILL", "postgres crash", "daemon SIGTERM"}


def test_thirty_seconds_of_chaos_lose_nothing_charge_nothing_wrongly_and_leave_nothing_running():
    result = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "30", "--fault-every", "7", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["submitted"] > 100
    assert set(figures["faults"]) == KINDS
    assert figures["jobs not terminal"] == 0
    assert figures["audit clean"] is True
    assert figures["jobs whose net charge is not delivered x unit"] == 0
    assert figures["identical clicks that made two jobs"] == 0
    assert figures["users over their seats (now)"] == 0
    assert figures["predictions still running upstream"] == 0
    assert figures["tracebacks"] == 0
    assert all(seconds < 15 for seconds in figures["ready after (s, worst)"].values()), figures
