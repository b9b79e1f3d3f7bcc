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


QUICK = """
import atexit, sys
class Torn:
    def __del__(self):
        print("torn down")
kept = Torn()  # a module global: destroyed by the interpreter's teardown
atexit.register(lambda: print("atexit ran"))
sys.stdout.write("buffered, no newline")
sys.stderr.write("err line")
from pcocc.cli import fastrun
fastrun.skip_exit_collection()
from pcocc.cli.main import finish
finish(7)
print("not reached")
"""


def test_finish_after_run_flushes_runs_atexit_and_keeps_the_status():
    """``pcocc run`` ends with os._exit (no teardown of every module), yet what it wrote is
    flushed, the atexit handlers run and the status is the run's."""
    res = subprocess.run([sys.executable, "-c", QUICK], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 7
    assert res.stdout == "buffered, no newlineatexit ran\n"  # no teardown
    assert res.stderr == "err line"


def test_finish_of_other_commands_is_a_plain_exit():
    code = QUICK.replace("fastrun.skip_exit_collection()", "pass")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 7
    assert res.stdout.endswith("atexit ran\ntorn down\n")


def test_finish_waits_for_a_running_thread():
    code = QUICK.replace("fastrun.skip_exit_collection()", """fastrun.skip_exit_collection()
import threading, time
threading.Thread(target=lambda: (time.sleep(0.2), print("thread done"))).start()""")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 7
    assert "thread done" in res.stdout
