"""pcocc.kv.connect.LazyKv: the node process's etcd client, opened on first use."""

import pytest

from pcocc.errors import ServiceUnavailable
from pcocc.kv.connect import LazyKv
from tests.fixtures.memkv import MemoryKv


def test_it_connects_on_first_use_only_once():
    opened = []
    kv = MemoryKv()
    lazy = LazyKv(lambda: opened.append(1) or kv)
    assert opened == []
    lazy.put("/a", "1")
    assert lazy.get("/a") == "1"
    assert opened == [1]


def test_closing_it_unused_connects_nothing():
    lazy = LazyKv(lambda: pytest.fail("opened"))
    lazy.close()


def test_a_failed_connection_is_reported_again_without_a_second_try():
    tries = []

    def opener():
        tries.append(1)
        raise ServiceUnavailable("the job's private etcd did not start within 60 s")

    lazy = LazyKv(opener)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable, match="did not start"):
            lazy.get("/a")
    assert tries == [1]
