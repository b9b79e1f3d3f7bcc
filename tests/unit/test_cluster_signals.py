import os
import queue
import signal
import threading

from pcocc.signals import signals_set


def test_a_signal_sets_the_event_while_the_main_thread_waits_on_a_queue():
    stop = threading.Event()
    q: queue.Queue[int] = queue.Queue()
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with signals_set(stop) as received:
        for _ in range(200):  # at most 10 s
            if stop.is_set():
                break
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
    assert received == [signal.SIGTERM]
    assert stop.is_set()
    q.put(1)
    assert q.get(timeout=1) == 1  # the queue's lock is intact
    assert signal.getsignal(signal.SIGTERM) is before


def test_how_a_process_ended_reads_as_english():
    from pcocc.proc import ended

    assert ended(0) == "exited with status 0"
    assert ended(3) == "exited with status 3"
    assert ended(-9) == "was killed by signal 9 (KILL)"
    assert ended(-15) == "was killed by signal 15 (TERM)"
    assert ended(-99) == "was killed by signal 99"
