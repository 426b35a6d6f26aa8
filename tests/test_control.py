"""The control socket over real Unix sockets in tmp_path: protocol, server, client, event bus."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.client import EXIT_UNREACHABLE, ControlClient, DaemonUnreachable, exit_code
from agent.control.protocol import (
    MAX_LINE,
    LineBuffer,
    OpError,
    decode_event,
    decode_request,
    decode_response,
    encode_error,
    encode_event,
    encode_request,
    encode_result,
)
from agent.control.server import ControlServer, SocketInUse, caller_user
from agent.events import Event, EventBus, SubscriptionClosed

WAIT = 5.0  # generous bound for anything that should happen at once; never a synchronisation


class Harness:
    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.path = path
        self.bus = EventBus()
        self.entered = threading.Event()
        self.release = threading.Event()
        ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "echo": lambda args: {"args": args},
            "boom": self._boom,
            "refuse": self._refuse,
            "block": self._block,
            "not_a_dict": lambda args: [1, 2],
            "whoami": lambda args: {"user": caller_user()},
        }
        self.server = ControlServer(
            path, ops, self.bus, hello_info=lambda: {"agent_version": "0.1.0"}, **kwargs
        )

    @staticmethod
    def _boom(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    @staticmethod
    def _refuse(args: dict[str, Any]) -> dict[str, Any]:
        raise OpError("conflict", "an exam is already open", accession="A1")

    def _block(self, args: dict[str, Any]) -> dict[str, Any]:
        self.entered.set()
        return {"released": self.release.wait(WAIT)}


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "ctl.sock"


@pytest.fixture
def make_server(sock_path: Path) -> Iterator[Callable[..., Harness]]:
    started: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        harness = Harness(sock_path, **kwargs)
        harness.server.start()
        started.append(harness)
        return harness

    yield make
    for harness in started:
        harness.release.set()
        harness.server.stop()


@pytest.fixture
def server(make_server: Callable[..., Harness]) -> Harness:
    return make_server()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(str(path))
    return sock


def read_objects(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    buffer, lines = LineBuffer(), list[bytes]()
    while len(lines) < count:
        data = sock.recv(65536)
        assert data, f"connection closed after {len(lines)} line(s)"
        lines.extend(buffer.feed(data))
    assert len(lines) == count
    return [json.loads(line) for line in lines]


# -- protocol (pure) ----------------------------------------------------------------------------


def test_wire_round_trip() -> None:
    request = decode_request(encode_request("a", "exam.start", {"patient_id": "P1"}).rstrip())
    assert (request.id, request.op, request.args) == ("a", "exam.start", {"patient_id": "P1"})
    assert decode_request(encode_request(7, "hello").rstrip()).args == {}
    ok = decode_response(encode_result(7, {"exam": None}).rstrip())
    assert (ok.id, ok.ok, ok.result) == (7, True, {"exam": None})
    err = decode_response(encode_error(8, OpError("timeout", "late", open=[1])).rstrip())
    assert err.error is not None and not err.ok
    assert (err.error.code, err.error.message, err.error.details) == (
        "timeout",
        "late",
        {"open": [1]},
    )
    event = Event(41, "slice.accepted", "2026-11-26T08:00:01.120Z", {"n": "\n"})
    line = encode_event(event)
    assert line.count(b"\n") == 1 and decode_event(line.rstrip()) == event


def test_line_buffer_splits_and_limits() -> None:
    buffer = LineBuffer(limit=8)
    assert list(buffer.feed(b"ab")) == []
    assert list(buffer.feed(b"c\nd\n\nef")) == [b"abc", b"d", b""]
    assert list(buffer.feed(b"g\n")) == [b"efg"]
    lines: list[bytes] = []
    with pytest.raises(OpError, match="longer than 8") as caught:
        lines.extend(buffer.feed(b"ok\n123456789"))
    assert lines == [b"ok"] and caught.value.code == "bad_request"


def test_exit_codes() -> None:
    codes = ["bad_request", "unsupported_version", "timeout", "not_found", "internal", "new"]
    assert [exit_code(OpError(c, "")) for c in codes] == [2, 2, 3, 1, 1, 1]
    assert EXIT_UNREACHABLE == 4


# -- requests and errors ------------------------------------------------------------------------


def test_round_trip(server: Harness) -> None:
    with ControlClient(server.path) as client:
        assert client.request("hello") == {"versions": [1], "agent_version": "0.1.0"}
        assert client.request("echo", {"name": "DOE^JANE é"}) == {"args": {"name": "DOE^JANE é"}}


def test_operation_knows_the_os_user_who_asked(server: Harness) -> None:
    """SO_PEERCRED: the audit trail records who was on the other end of the socket."""
    import pwd

    with ControlClient(server.path) as client:
        assert client.request("whoami") == {"user": pwd.getpwuid(os.getuid()).pw_name}


def test_pipelined_requests_answered_in_order(server: Harness) -> None:
    ids: list[int | str] = [1, "two", 3, 4, "5"]
    ops = ["echo", "hello", "nope", "boom", "echo"]
    with connect(server.path) as sock:
        sock.sendall(
            b"".join(encode_request(i, op, {"i": i}) for i, op in zip(ids, ops, strict=True))
        )
        answers = read_objects(sock, len(ids))
    assert [a["id"] for a in answers] == ids
    assert [a["ok"] for a in answers] == [True, True, False, False, True]
    assert answers[4]["result"] == {"args": {"i": "5"}}


@pytest.mark.parametrize(
    ("line", "rid", "code"),
    [
        (b"not json", None, "bad_request"),
        (b"", None, "bad_request"),
        (b"\xff{}", None, "bad_request"),
        (b"[1, 2]", None, "bad_request"),
        (b'{"v": 1, "op": "hello"}', None, "bad_request"),
        (b'{"v": 1, "id": true, "op": "hello"}', None, "bad_request"),
        (b'{"v": 1, "id": 1, "id": 2, "op": "hello"}', None, "bad_request"),
        (b'{"v": 1, "id": 3, "op": "hello", "x": NaN}', None, "bad_request"),
        (b'{"v": 1, "id": 3, "op": "nope"}', 3, "bad_request"),
        (b'{"v": 1, "id": 3, "op": "echo", "args": []}', 3, "bad_request"),
        (b'{"id": "x", "op": "hello"}', "x", "bad_request"),
        (b'{"v": "1", "id": 4, "op": "hello"}', 4, "bad_request"),
        (b'{"v": 2, "id": 4, "op": "anything"}', 4, "unsupported_version"),
    ],
)
def test_bad_requests(server: Harness, line: bytes, rid: Any, code: str) -> None:
    with connect(server.path) as sock:
        sock.sendall(line + b"\n" + encode_request(9, "hello"))
        error, after = read_objects(sock, 2)
    assert (error["v"], error["id"], error["ok"], error["error"]["code"]) == (1, rid, False, code)
    assert error["error"]["message"]
    if code == "unsupported_version":
        assert error["error"]["supported"] == [1]
    assert after["id"] == 9 and after["ok"]  # the connection carries on


def test_unknown_op_suggests(server: Harness) -> None:
    with ControlClient(server.path) as client, pytest.raises(OpError, match="did you mean echo"):
        client.request("ecko")


def test_errors_mapped_and_server_survives(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with ControlClient(server.path) as client:
        with pytest.raises(OpError) as refused:
            client.request("refuse")
        assert (refused.value.code, refused.value.details) == ("conflict", {"accession": "A1"})
        assert exit_code(refused.value) == 1
        for op in ("boom", "not_a_dict"):
            with caplog.at_level(logging.ERROR), pytest.raises(OpError) as failed:
                client.request(op)
            assert failed.value.code == "internal" and "log" in failed.value.message
        assert any(r.exc_info for r in caplog.records), "the traceback is logged"
        assert client.request("echo") == {"args": {}}


def test_over_long_line_answered_then_closed(server: Harness) -> None:
    with connect(server.path) as sock:
        sock.sendall(b"x" * (MAX_LINE + 1))
        (error,) = read_objects(sock, 1)
        assert (error["id"], error["error"]["code"]) == (None, "bad_request")
        assert sock.recv(1) == b""


# -- the socket file ----------------------------------------------------------------------------


def test_socket_mode_0660_whatever_the_umask(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link
    seen: list[int] = []

    def spy(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        # the moment the socket becomes reachable at its public path
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        assert stat.S_IMODE(os.stat(os.path.dirname(src)).st_mode) == 0o700
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", spy)
    old = os.umask(0)
    try:
        harness = Harness(sock_path)
        harness.server.start()
    finally:
        os.umask(old)
    try:
        assert seen == [0o660]
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o750
        assert os.listdir(sock_path.parent) == [sock_path.name], "no temporary left behind"
    finally:
        harness.server.stop()
    assert not sock_path.exists()


def test_stale_socket_of_a_killed_daemon_is_replaced(
    sock_path: Path, make_server: Callable[..., Harness]
) -> None:
    sock_path.parent.mkdir()
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(sock_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    child.send_signal(signal.SIGKILL)
    child.wait(WAIT)
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    harness = make_server()
    with ControlClient(harness.path) as client:
        assert client.request("hello")["versions"] == [1]


def test_live_daemon_keeps_its_socket(server: Harness) -> None:
    second = ControlServer(server.path, {}, EventBus())
    with pytest.raises(SocketInUse, match="already listening"):
        second.start()
    with ControlClient(server.path) as client:
        assert client.request("echo") == {"args": {}}


def test_a_plain_file_is_never_removed(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    sock_path.write_text("precious")
    with pytest.raises(SocketInUse, match="not a socket"):
        ControlServer(sock_path, {}, EventBus()).start()
    assert sock_path.read_text() == "precious"


# -- the client ---------------------------------------------------------------------------------


def test_missing_socket_is_unreachable_at_once(sock_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(DaemonUnreachable) as caught:
        ControlClient(sock_path).request("hello")
    assert time.monotonic() - began < 1.0
    assert str(sock_path) in str(caught.value) and "\n" not in str(caught.value)


def test_refused_socket_is_unreachable(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock_path))  # closed without listening: connect() is refused
    with pytest.raises(DaemonUnreachable, match="refused"), ControlClient(sock_path):
        pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_permission_denied_is_unreachable(server: Harness) -> None:
    os.chmod(server.path, 0)
    with pytest.raises(DaemonUnreachable, match="permission denied"), ControlClient(server.path):
        pass


def test_slow_op_does_not_block_another_client(server: Harness) -> None:
    results: list[dict[str, Any]] = []
    slow = threading.Thread(
        target=lambda: results.append(ControlClient(server.path).request("block"))
    )
    slow.start()
    assert server.entered.wait(WAIT)
    with ControlClient(server.path) as other:
        assert other.request("echo", {"a": 1}) == {"args": {"a": 1}}
    assert not results, "answered while the slow op still runs"
    server.release.set()
    slow.join(WAIT)
    assert results == [{"released": True}]


def test_connections_are_bounded(make_server: Callable[..., Harness]) -> None:
    harness = make_server(max_connections=2)
    clients = [ControlClient(harness.path), ControlClient(harness.path)]
    try:
        for client in clients:
            client.request("hello")  # admitted and served
        with connect(harness.path) as extra:
            (refused,) = read_objects(extra, 1)
            assert (refused["id"], refused["error"]["code"]) == (None, "failed")
            assert "too many connections" in refused["error"]["message"]
            assert extra.recv(1) == b""
        with pytest.raises(OpError, match="too many"):
            ControlClient(harness.path).request("hello")
    finally:
        for client in clients:
            client.close()


def test_client_timeout_skips_the_late_answer(server: Harness) -> None:
    with ControlClient(server.path) as client:
        with pytest.raises(OpError) as caught:
            client.request("block", timeout=0.05)
        assert caught.value.code == "timeout" and exit_code(caught.value) == 3
        server.release.set()
        assert client.request("echo", {"b": 2}) == {"args": {"b": 2}}


# -- events -------------------------------------------------------------------------------------


def test_bus_publish_never_blocks_and_leaves_a_gap() -> None:
    bus = EventBus()
    with bus.subscribe(["slice"], maxsize=10) as sub:
        for n in range(25):  # nobody reads: every publish must return at once
            bus.publish("slice.accepted", {"n": n})
        bus.publish("exam.started", {})  # not this subscriber's topic: no seq used
        assert (sub.pending, sub.dropped) == (10, 15)
        got = [sub.get(0) for _ in range(10)]
        assert [e.seq for e in got if e] == list(range(1, 11))
        assert sub.get(0) is None
        bus.publish("slice.accepted", {"n": 25})
        last = sub.get(0)
        assert last is not None and (last.seq, last.data) == (26, {"n": 25})


def test_bus_checks_topics_and_close_wakes_a_reader() -> None:
    bus = EventBus()
    with pytest.raises(ValueError):
        bus.publish("slices.accepted", {})
    with pytest.raises(ValueError):
        bus.subscribe(["slices"])
    sub = bus.subscribe()
    outcome: list[str] = []

    def read() -> None:
        try:
            sub.get()
        except SubscriptionClosed:
            outcome.append("closed")

    reader = threading.Thread(target=read)
    reader.start()
    bus.close()
    reader.join(WAIT)
    assert outcome == ["closed"]
    bus.publish("exam.started", {})  # ignored after close, still never raises


def test_subscription_filters_topics_with_consecutive_seq(server: Harness) -> None:
    with ControlClient(server.path) as client:
        events = client.events(["exam", "slices"])  # "slices": the name the protocol page uses
        for name in ("exam.started", "delivery.progress", "slice.accepted", "alarm.raised"):
            server.bus.publish(name, {"name": name})
        server.bus.publish("exam.ended", {"state": "completed"})
        got = [next(events) for _ in range(3)]
    assert [(e.seq, e.event) for e in got] == [
        (1, "exam.started"),
        (2, "slice.accepted"),
        (3, "exam.ended"),
    ]
    assert got[2].data == {"state": "completed"}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e.time) for e in got)


def test_subscribe_rejects_unknown_topics(server: Harness) -> None:
    with ControlClient(server.path) as client, pytest.raises(OpError) as caught:
        client.events(["exam", "weather"])
    assert caught.value.code == "bad_request" and "weather" in caught.value.message


def test_slow_subscriber_gets_a_gap_and_never_blocks_publishing(
    make_server: Callable[..., Harness],
) -> None:
    harness = make_server(event_buffer=4)
    blob = "x" * 65536  # 200 of these are far more than the socket and the queue can hold
    with ControlClient(harness.path) as client:
        events = client.events(["slice"])
        for n in range(200):  # the client reads nothing meanwhile
            harness.bus.publish("slice.accepted", {"n": n, "blob": blob})
        seqs: list[int] = []
        while len(seqs) < 1000 and not any(b - a > 1 for a, b in itertools.pairwise(seqs)):
            seqs.append(next(events).seq)
            harness.bus.publish("slice.accepted", {"n": -1})  # keeps the stream going
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    assert any(b - a > 1 for a, b in itertools.pairwise(seqs)), "a gap tells the client to resync"


def test_stop_closes_subscribers_cleanly(server: Harness) -> None:
    client = ControlClient(server.path)
    idle = ControlClient(server.path)
    idle.request("hello")
    events = client.events()
    first = threading.Event()
    received: list[Event] = []
    failures: list[BaseException] = []

    def read() -> None:
        try:
            for event in events:
                received.append(event)
                first.set()
        except BaseException as e:
            failures.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    server.bus.publish("alarm.raised", {"kind": "disk"})
    assert first.wait(WAIT)
    server.server.stop()
    reader.join(WAIT)
    assert not reader.is_alive() and not failures
    assert [e.event for e in received] == ["alarm.raised"]
    assert not server.path.exists()
    with pytest.raises(DaemonUnreachable):
        idle.request("hello")
    client.close()
    idle.close()
