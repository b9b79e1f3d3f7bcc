"""``pcocc run`` freezes the objects alive at exit, so that the final collection skips them."""

import subprocess
import sys

CHECK = """
import atexit, gc
# registered first, so it runs last (atexit is LIFO): after the hook under test
atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0))
from pcocc.cli.fastrun import skip_exit_collection
skip_exit_collection()
skip_exit_collection()  # idempotent
import atexit as a
print("handlers", a._ncallbacks())
"""


def test_exit_hook_freezes_once():
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert "handlers 2" in out
    assert "frozen True" in out


def test_without_hook_nothing_is_frozen():
    code = CHECK.replace("skip_exit_collection()", "pass")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert "frozen False" in out
