"""Each package's front door lists exactly its public names."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "actors",
    "orchestrator.core",
    "orchestrator.db",
    "orchestrator.providers",
    "orchestrator.simulator",
    "orchestrator.metrics",
    "orchestrator.cli",
    "orchestrator.outputs",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_every_public_name_once(name: str):
    """`__all__` is the public API: complete, without repeats, free of private names.

    Its order (constants, classes, functions) is ruff's RUF022 to keep.
    """
    module = importlib.import_module(name)
    public = {n for n in vars(module) if not n.startswith("_") and not _is_submodule(module, n)}
    assert len(set(module.__all__)) == len(module.__all__)
    assert set(module.__all__) == public


def _is_submodule(module: object, attribute: str) -> bool:
    value = getattr(module, attribute)
    return type(value).__name__ == "module"
