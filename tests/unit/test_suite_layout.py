"""The layout of the test suite itself."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique():
    """pytest imports test modules by base name (no packages under tests/): two files with
    one name stop the whole run at collection."""
    where = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        where[path.name].append(str(path.relative_to(TESTS)))
    assert {n: p for n, p in where.items() if len(p) > 1} == {}
