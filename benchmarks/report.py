"""Turn the records of the benchmarks (see benchlib.py) into benchmarks/results/report.md.

``write_report(records, runs, machine, outdir)``: ``records`` are the JSON objects the
benchmarks appended, ``runs`` one entry per benchmark run ({"bench", "status", "seconds"}),
``machine`` what ``machine_info()`` returns. Plots are PNG files next to the report, drawn with
matplotlib when it is installed (helpers/setup installs it); without it the report says so.
"""

from __future__ import annotations

import collections
import datetime
import os
import platform
from pathlib import Path


def machine_info() -> dict[str, str]:
    """CPU model, cores, memory, load average and date of this machine, as text."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "load": load,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _value(value: float, unit: str) -> str:
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.3g} {unit}"


def _verdict(record: dict) -> str:
    met = record.get("met")
    return "—" if met is None else ("met" if met else "**missed**")


def table(records: list[dict], runs: list[dict]) -> list[str]:
    """The Markdown table: every figure, with its target and verdict; a line per failed run."""
    lines = ["| benchmark | figure | value | target | verdict |",
             "|---|---|---|---|---|"]
    figures = collections.defaultdict(list)
    for record in records:
        if record.get("kind") == "figure":
            figures[record["bench"]].append(record)
    for run in runs:
        bench = run["bench"]
        for record in figures.pop(bench, []):
            lines.append(f"| {bench} | {record['name']} | "
                         f"{_value(record['value'], record['unit'])} | "
                         f"{record.get('target') or '—'} | {_verdict(record)} |")
        if run["status"] != 0:
            lines.append(f"| {bench} | run failed (status {run['status']}, see "
                         f"{bench}.log) | — | — | **missed** |")
    for bench, rest in figures.items():  # records without a run entry: still shown
        for record in rest:
            lines.append(f"| {bench} | {record['name']} | "
                         f"{_value(record['value'], record['unit'])} | "
                         f"{record.get('target') or '—'} | {_verdict(record)} |")
    return lines


def plot(records: list[dict], outdir: Path) -> list[str]:
    """Draw one PNG per plot name; returns the Markdown lines that show them."""
    plots: dict[str, list[dict]] = collections.defaultdict(list)
    for record in records:
        if record.get("kind") == "point":
            plots[record["plot"]].append(record)
    if not plots:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["Plots skipped: matplotlib is not installed (helpers/setup installs it)."]
    lines = []
    for name, points in sorted(plots.items()):
        first = points[0]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        series: dict[str, list[dict]] = collections.defaultdict(list)
        for p in points:
            series[p["series"]].append(p)
        if first.get("style") == "bar":
            labels = list(dict.fromkeys(str(p["x"]) for p in points))
            width = 0.8 / len(series)
            for i, (label, pts) in enumerate(series.items()):
                ys = {str(p["x"]): p["y"] for p in pts}
                xs = [j + i * width for j, x in enumerate(labels) if x in ys]
                ax.bar(xs, [ys[x] for x in labels if x in ys], width, label=label)
            ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))])
            ax.set_xticklabels(labels, rotation=20, ha="right")
        else:
            for label, pts in series.items():
                pts = sorted(pts, key=lambda p: p["x"])
                ax.plot([p["x"] for p in pts], [p["y"] for p in pts], marker="o", label=label)
        ax.set_title(first.get("title") or name)
        ax.set_xlabel(first.get("xlabel", ""))
        ax.set_ylabel(first.get("ylabel", ""))
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(outdir / f"{name}.png", dpi=90)
        plt.close(fig)
        lines += [f"### {first.get('title') or name}", "", f"![{name}]({name}.png)", ""]
    return lines


def render(records: list[dict], runs: list[dict], machine: dict[str, str],
           plot_lines: list[str], quick: bool) -> str:
    """The whole report as Markdown."""
    out = ["# pcocc benchmark report", "",
           f"Generated by `benchmarks/run-all{' --quick' if quick else ''}` on "
           f"{machine['date']}. Do not edit: run it again.", "",
           "## Machine", "",
           f"- CPU: {machine['cpu']}, {machine['cores']} cores",
           f"- memory: {machine['memory']}",
           f"- load average (1, 5, 15 min) before the run: {machine['load']}",
           "- the machine may be shared: figures are noisy, compare ratios taken in one run",
           "", "## Figures", "", *table(records, runs), "",
           "## Benchmarks and their baselines", ""]
    baselines = collections.defaultdict(list)
    notes = collections.defaultdict(list)
    for record in records:
        if record.get("kind") == "baseline":
            baselines[record["bench"]].append(record["text"])
        elif record.get("kind") == "note":
            notes[record["bench"]].append(record["text"])
    for run in runs:
        bench = run["bench"]
        status = "ok" if run["status"] == 0 else f"FAILED (status {run['status']})"
        out.append(f"- **{bench}** ({run['seconds']:.0f} s, {status})")
        for text in baselines.get(bench, []) or ["(printed no baseline line)"]:
            out.append(f"  - baseline: {text}")
        for text in notes.get(bench, []):
            out.append(f"  - {text}")
    out.append("")
    if plot_lines:
        out += ["## Plots", "", *plot_lines]
    return "\n".join(out) + "\n"


def write_report(records: list[dict], runs: list[dict], machine: dict[str, str],
                 outdir: Path, quick: bool = False) -> Path:
    """Write outdir/report.md and its plots; returns the report's path."""
    outdir.mkdir(parents=True, exist_ok=True)
    text = render(records, runs, machine, plot(records, outdir), quick)
    path = outdir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
