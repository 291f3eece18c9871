"""The fixed number of partition slots: `orchestrator.slot_of` in schema.sql agrees."""

from __future__ import annotations

from typing import Final

SLOTS: Final = 1024
ALL_SLOTS: Final = tuple(range(SLOTS))
