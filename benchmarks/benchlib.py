"""What every benchmark shares: quick mode, the baseline line and machine-readable results.

The convention (benchmarks/README.md): a benchmark prints its figures for people and also
calls ``figure`` for each one (and ``point`` for each point of a plot). When
``$PCOCC_BENCH_RESULTS`` names a file, each call appends one JSON object to it (one per line);
``benchmarks/run-all`` sets it, collects the files and generates the report from them.
``--quick`` (or ``$PCOCC_BENCH_QUICK=1``) asks for fewer rounds and smaller sizes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

RESULTS_ENV = "PCOCC_BENCH_RESULTS"
QUICK_ENV = "PCOCC_BENCH_QUICK"


def add_quick(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        default=os.environ.get(QUICK_ENV) == "1",
                        help="fewer rounds and smaller sizes (benchmarks/run-all --quick)")


def _emit(record: dict) -> None:
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


def bench_name() -> str:
    import __main__

    return Path(getattr(__main__, "__file__", "benchmark")).stem


def baseline(text: str) -> None:
    """Print (and record) the one line saying how the baseline was made."""
    print(f"baseline: {text}", flush=True)
    _emit({"kind": "baseline", "bench": bench_name(), "text": text})


def met(value: float, target: str | None) -> bool | None:
    """Whether ``value`` meets ``target`` ("<= 1.3", "< 1", ">= 10"); None without one."""
    if not target:
        return None
    op, _, limit = target.partition(" ")
    bound = float(limit)
    return {"<=": value <= bound, "<": value < bound,
            ">=": value >= bound, ">": value > bound}[op]


def figure(name: str, value: float, unit: str, target: str | None = None,
           note: str = "") -> bool | None:
    """Record one figure of the report's table; returns whether it met ``target``."""
    ok = met(value, target)
    _emit({"kind": "figure", "bench": bench_name(), "name": name, "value": value,
           "unit": unit, "target": target, "met": ok, "note": note})
    return ok


def point(plot: str, series: str, x: float | str, y: float, *, title: str = "",
          xlabel: str = "", ylabel: str = "", style: str = "line") -> None:
    """One point of a plot of the report (style "line" or "bar"; bars take a label x)."""
    _emit({"kind": "point", "bench": bench_name(), "plot": plot, "series": series, "x": x,
           "y": y, "title": title, "xlabel": xlabel, "ylabel": ylabel, "style": style})


def note(text: str) -> None:
    """A remark for the report (a missing tool, a skipped case); printed as well."""
    print(text, flush=True)
    _emit({"kind": "note", "bench": bench_name(), "text": text})


def phases(path: Path, start: str) -> dict[str, float]:
    """Seconds from the phase ``start`` to each other phase pcocc marked in the
    ``$PCOCC_TIMING`` file ``path`` (pcocc/timing.py); {} without it. Removes the file."""
    stamps = {}
    if path.exists():
        for line in path.read_text().splitlines():
            stamp, _pid, phase = line.split(" ", 2)
            stamps[phase] = float(stamp)
        path.unlink()
    t0 = stamps.pop(start, None)
    return {} if t0 is None else {k: v - t0 for k, v in stamps.items()}


def print_phases(rounds: list[dict[str, float]], what: str) -> None:
    """The median time of each phase over ``rounds`` (from :func:`phases`), in order."""
    rounds = [r for r in rounds if r]
    if not rounds:
        return
    print(f"  where {what}'s time goes (median seconds since the process started):")
    for phase in sorted(rounds[0], key=lambda k: rounds[0][k]):
        values = sorted(r.get(phase, 0.0) for r in rounds)
        print(f"    {values[len(values) // 2]:6.3f}  {phase}")
