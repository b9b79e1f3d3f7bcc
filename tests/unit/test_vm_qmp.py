"""QMP client failures against real sockets (no QEMU): refused, jammed, closed."""

from __future__ import annotations

import socket
import threading

import pytest

from pcocc.errors import PcoccError, ServiceUnavailable
from pcocc.vm.qmp import QmpClient


def test_missing_socket_is_service_unavailable(tmp_path):
    path = tmp_path / "qmp.sock"
    with pytest.raises(ServiceUnavailable) as info:
        QmpClient(path, timeout_s=2).connect()
    assert str(path) in str(info.value)
    assert info.value.hint


def test_server_that_never_greets_times_out(tmp_path):
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)  # accepts in the backlog, never speaks
        client = QmpClient(path, timeout_s=0.5)
        with pytest.raises(ServiceUnavailable) as info:
            client.connect()
        client.close()
    assert "timed out after 0.5 s" in str(info.value)


def test_server_that_hangs_up_is_service_unavailable(tmp_path):
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        client = QmpClient(path, timeout_s=2)
        def hang_up():
            conn, _ = server.accept()
            conn.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        with pytest.raises(ServiceUnavailable):
            client.connect()
        thread.join()
        client.close()


def test_closed_client_cannot_reconnect(tmp_path):
    client = QmpClient(tmp_path / "qmp.sock")
    client.close()
    client.close()  # twice is harmless
    with pytest.raises(PcoccError) as info:
        client.connect()
    assert "closed" in str(info.value)
