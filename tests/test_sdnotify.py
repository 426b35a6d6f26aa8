"""The systemd notify client against real AF_UNIX datagram sockets, as systemd listens: a path
in tmp_path and a Linux abstract socket ('@name')."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import sdnotify


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> str:
        data, _ = self.sock.recvfrom(4096)
        return data.decode()

    def nothing_waiting(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False


def _listen(address: str, env_value: str) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.bind(address)
    try:
        yield Listener(sock, env_value)
    finally:
        sock.close()


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    path = str(tmp_path / "notify")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield from _listen(path, path)


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    name = f"modality-agent-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield from _listen("\0" + name, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Listener:
    fixture = "path_socket" if request.param == "path" else "abstract_socket"
    listener: Listener = request.getfixturevalue(fixture)
    return listener


def test_ready_with_status(listener: Listener) -> None:
    assert sdnotify.ready("spool recovered, 3 pending")
    assert listener.receive() == "READY=1\nSTATUS=spool recovered, 3 pending\n"


def test_ready_alone(listener: Listener) -> None:
    assert sdnotify.ready()
    assert listener.receive() == "READY=1\n"


def test_watchdog_status_and_stopping(listener: Listener) -> None:
    assert sdnotify.watchdog()
    assert sdnotify.status("sending to PACS")
    assert sdnotify.stopping()
    assert [listener.receive() for _ in range(3)] == [
        "WATCHDOG=1\n",
        "STATUS=sending to PACS\n",
        "STOPPING=1\n",
    ]


def test_notify_sends_fields_in_order_in_one_datagram(listener: Listener) -> None:
    assert sdnotify.notify(STATUS="x", ERRNO=5, EXTEND_TIMEOUT_USEC=3_000_000, WATCHDOG=True)
    assert listener.receive() == "STATUS=x\nERRNO=5\nEXTEND_TIMEOUT_USEC=3000000\nWATCHDOG=1\n"
    assert listener.nothing_waiting()


def test_unset_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("x") is False
    assert sdnotify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.stopping() is False


@pytest.mark.parametrize(
    "fields",
    [{}, {"ready": 1}, {"1READY": 1}, {"STATUS": "two\nlines"}],
)
def test_malformed_fields_are_a_programming_error(
    fields: dict[str, str | int], path_socket: Listener
) -> None:
    with pytest.raises(ValueError):
        sdnotify.notify(**fields)
    assert path_socket.nothing_waiting()


def test_nobody_listening_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        assert sdnotify.watchdog() is False
    assert "sd_notify" in caplog.text


def test_relative_notify_socket_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    with caplog.at_level(logging.WARNING, logger="agent.sdnotify"):
        assert sdnotify.ready() is False
    assert "neither an absolute path" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1234"}, 1.5),  # this process is 1234
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "999"}, None),  # meant for another one
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_PID": "1234"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env, pid=1234) == expected


def test_watchdog_interval_reads_the_environment_and_this_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None
