"""benchmarks/run-all's report: generated from the benchmarks' records (issue 18)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import benchlib  # noqa: E402
import report  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": "2", "memory": "3.8 GiB", "load": "1.00 0.50 0.25",
           "date": "2026-12-03 12:00 UTC"}


def all_benchmarks() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stat().st_mode & 0o111)


def fake_records(benches: list[str]) -> list[dict]:
    records = []
    for i, bench in enumerate(benches):
        records.append({"kind": "baseline", "bench": bench, "text": f"how {bench} is made"})
        records.append({"kind": "figure", "bench": bench, "name": f"{bench} ratio",
                        "value": 1.0 + i, "unit": "x", "target": "<= 1.5",
                        "met": 1.0 + i <= 1.5, "note": ""})
    return records


def test_the_table_has_a_line_for_every_figure_of_every_benchmark(tmp_path):
    benches = all_benchmarks()
    assert "alloc_ready" in benches and "image_import" in benches
    runs = [{"bench": b, "status": 0, "seconds": 1.0} for b in benches]
    path = report.write_report(fake_records(benches), runs, MACHINE, tmp_path)
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    for i, bench in enumerate(benches):
        [row] = [r for r in rows if r.startswith(f"| {bench} | {bench} ratio |")]
        assert ("| met |" if i == 0 else "| **missed** |") in row
        assert "<= 1.5" in row
        assert f"baseline: how {bench} is made" in text
    for fact in ("Test CPU, 2 cores", "3.8 GiB", "1.00 0.50 0.25", "2026-12-03 12:00 UTC"):
        assert fact in text


def test_a_failed_or_silent_benchmark_still_has_its_line(tmp_path):
    runs = [{"bench": "alloc_ready", "status": 1, "seconds": 3.0},
            {"bench": "later_one", "status": 0, "seconds": 1.0}]
    text = report.write_report([], runs, MACHINE, tmp_path).read_text()
    assert "| alloc_ready | run failed (status 1, see alloc_ready.log)" in text
    assert "later_one** (1 s, ok)" in text and "(printed no baseline line)" in text


def test_benchlib_appends_one_json_line_per_record(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    monkeypatch.setenv(benchlib.RESULTS_ENV, str(out))
    assert benchlib.figure("overhead", 0.7, "s", "<= 0.5") is False
    assert benchlib.figure("ratio", 1.2, "x", "<= 1.3") is True
    benchlib.baseline("QEMU alone")
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds == ["figure", "figure", "baseline"]


@pytest.mark.parametrize(("value", "target", "expected"), [
    (1.0, "<= 1", True), (1.0, "< 1", False), (5, ">= 5", True), (4.9, "> 5", False),
    (3.0, None, None),
])
def test_targets(value, target, expected):
    assert benchlib.met(value, target) is expected
