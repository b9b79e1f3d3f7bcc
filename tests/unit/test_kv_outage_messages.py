"""An etcd outage is reported once per process: one warning when etcd is lost, one line when
it answers again, however many calls, keep-alives and watches fail meanwhile."""

import itertools
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from pcocc.errors import ServiceUnavailable
from pcocc.kv import client as kv_client
from pcocc.kv.client import KvClient

#: what etcd3 raises when etcd does not answer
ConnectionFailed = kv_client.etcd3.exceptions.ConnectionFailedError


class Flaky:
    """Fails ``failures`` times (etcd does not answer), then answers with ``answer()``."""

    def __init__(self, failures, answer):
        self.left = failures
        self.answer = answer

    def __call__(self, *args, **kwargs):
        if self.left > 0:
            self.left -= 1
            raise ConnectionFailed()
        return self.answer()


def outage_lines(caplog):
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name.startswith("pcocc") and r.levelno >= logging.WARNING
    ]


#: every test its own endpoint: the outage state is per endpoint and per process
_ports = itertools.count(3001)


@pytest.fixture
def client():
    # one endpoint, no login: etcd3 builds its channel without calling etcd (nothing listens)
    with KvClient(f"http://127.0.0.1:{next(_ports)}", timeout_s=0.5) as kv:
        yield kv


def test_calls_failing_n_times_then_working_say_it_twice(client, caplog):
    caplog.set_level(logging.DEBUG, logger="pcocc")
    client._etcd.get = Flaky(7, lambda: (b"v", None))
    failures = 0
    while True:
        try:
            assert client.get("/k") == b"v"
            break
        except ServiceUnavailable:
            failures += 1
    assert failures == 7
    client.get("/k")  # a further answer says nothing
    assert outage_lines(caplog) == [
        ("WARNING", f"lost etcd at {client.endpoint}; retrying (connection failed)"),
        ("WARNING", f"reconnected to etcd at {client.endpoint}"),
    ]


class Outage:
    """etcd away while ``down`` is set: every call fails (and is counted), then answers."""

    def __init__(self):
        self.down = threading.Event()
        self.failures = {}

    def call(self, name, answer):
        def fake(*args, **kwargs):
            if self.down.is_set():
                self.failures[name] = self.failures.get(name, 0) + 1
                raise ConnectionFailed()
            return answer()

        return fake


def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_keepalive_and_waiter_share_one_report(client, caplog):
    """The lease's keep-alive thread and a wait_for reading the prefix both fail, several
    times each, during one outage; the process reports it once, and its end once."""
    caplog.set_level(logging.DEBUG, logger="pcocc")
    etcd = Outage()
    raw = SimpleNamespace(id=0x1A, revoke=lambda: None)
    raw.refresh = etcd.call("refresh", lambda: [SimpleNamespace(TTL=3)])
    client._etcd.lease = lambda ttl: raw
    response = SimpleNamespace(kvs=[SimpleNamespace(key=b"/p/a", value=b"1")],
                               header=SimpleNamespace(revision=3))  # fmt: skip
    client._etcd.get_prefix_response = etcd.call("read", lambda: response)
    result = {}
    with client.lease(3) as lease:  # refreshed every second
        etcd.down.set()
        waiter = threading.Thread(
            target=lambda: result.update(
                got=client.wait_for("/p/", lambda keys: keys or None, 10, tick_s=0.05)
            )
        )
        waiter.start()
        wait_until(lambda: etcd.failures.get("refresh", 0) >= 1)
        wait_until(lambda: etcd.failures.get("read", 0) >= 5)
        etcd.down.clear()
        waiter.join(10)
        wait_until(lambda: lease.failing is None)
        assert lease.lost is None
    assert result["got"] == {"/p/a": b"1"}
    assert outage_lines(caplog) == [
        ("WARNING", f"lost etcd at {client.endpoint}; retrying (connection failed)"),
        ("WARNING", f"reconnected to etcd at {client.endpoint}"),
    ]
