"""Progress bars for long operations: drawn on stderr when it is a terminal, else nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pcocc.repo.model import Progress, no_progress


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool) -> Iterator[Progress]:
    """Yield a ``progress(done_bytes, total_bytes)`` callback drawing a rich bar with bytes
    and rate; a callback doing nothing when not ``enabled``."""
    if not enabled:
        yield no_progress
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    bar = RichProgress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def report(done_bytes: int, total_bytes: int | None) -> None:
            bar.update(task, completed=done_bytes, total=total_bytes)

        yield report
