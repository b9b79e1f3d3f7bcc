"""Progress bars: rich is imported only when an operation lasts long enough to show one."""

import subprocess
import sys

_PROBE = """
import sys, time
from pcocc.cli.progress import progress_bar
with progress_bar("x", enabled=True, show_after={after}) as report:
    for i in range(5):
        report(i * 10, 40)
        time.sleep({step})
print("rich" in sys.modules)
"""


def _rich_imported(after: float, step: float) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(after=after, step=step)],
        capture_output=True, text=True, check=True,
    )
    assert "Traceback" not in out.stderr
    return out.stdout.strip() == "True"


def test_quick_operation_draws_nothing_and_skips_rich():
    assert not _rich_imported(after=5.0, step=0)


def test_long_operation_draws_a_bar():
    assert _rich_imported(after=0.05, step=0.1)


def test_disabled_bar_is_a_no_op():
    from pcocc.cli.progress import progress_bar
    from pcocc.repo.model import no_progress

    with progress_bar("x", enabled=False) as report:
        assert report is no_progress
