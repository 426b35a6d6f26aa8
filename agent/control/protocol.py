"""The control protocol's wire format (docs/control-protocol.md). Pure: bytes in, objects out.

Every message is one JSON object in UTF-8 on one `\\n`-terminated line of at most MAX_LINE bytes
(the newline not counted). Decoders are strict and raise OpError("bad_request", ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from agent.events import Event

VERSION = 1
SUPPORTED_VERSIONS = (VERSION,)
MAX_LINE = 1 << 20

# error code -> CLI exit code (SPEC §8); a client that cannot reach the daemon exits 4
ERROR_EXIT: dict[str, int] = {
    "bad_request": 2,
    "unsupported_version": 2,
    "not_found": 1,
    "conflict": 1,
    "failed": 1,
    "timeout": 3,
    "internal": 1,
}
EXIT_UNREACHABLE = 4

RequestId = int | str


class OpError(Exception):
    """An error answer: `code` from ERROR_EXIT, `message` for a person, `details` for machines.

    On the wire the details are further members of the error object, beside code and message.
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details

    def to_json(self) -> dict[str, Any]:
        return {**self.details, "code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"OpError({self.code!r}, {self.message!r}, **{self.details!r})"


class RequestError(OpError):
    """A request that cannot be served; `request_id` is its id when that much was readable."""

    def __init__(
        self, request_id: RequestId | None, code: str, message: str, **details: Any
    ) -> None:
        super().__init__(code, message, **details)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: RequestId
    op: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Response:
    id: RequestId | None  # None: the daemon could not read the request's id
    result: dict[str, Any] | None  # set when ok
    error: OpError | None  # set when not ok

    @property
    def ok(self) -> bool:
        return self.error is None


# -- encoding ---------------------------------------------------------------------------------


def _encode(obj: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise OpError("bad_request", f"cannot encode as JSON: {e}") from None
    line = text.encode("utf-8")
    if len(line) > MAX_LINE:
        raise OpError("bad_request", f"message of {len(line)} bytes; the limit is {MAX_LINE}")
    return line + b"\n"


def encode_request(id: RequestId, op: str, args: Mapping[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"v": VERSION, "id": id, "op": op}
    if args:
        message["args"] = dict(args)
    return _encode(message)


def encode_result(id: RequestId | None, result: Mapping[str, Any]) -> bytes:
    return _encode({"v": VERSION, "id": id, "ok": True, "result": dict(result)})


def encode_error(id: RequestId | None, error: OpError) -> bytes:
    return _encode({"v": VERSION, "id": id, "ok": False, "error": error.to_json()})


def encode_event(event: Event) -> bytes:
    seq, name, time, data = event
    return _encode({"v": VERSION, "event": name, "seq": seq, "time": time, "data": data})


# -- decoding ---------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member in an object")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_object(line: bytes) -> dict[str, Any]:
    """One line (without its newline) -> a JSON object."""
    try:
        obj = json.loads(
            line.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError:
        raise OpError("bad_request", "not UTF-8") from None
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise OpError("bad_request", f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise OpError("bad_request", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> TypeGuard[RequestId]:
    return _is_int(value) or isinstance(value, str)


def decode_request(line: bytes) -> Request:
    """Raises RequestError (bad_request or unsupported_version), with the id when readable."""
    try:
        obj = decode_object(line)
    except OpError as e:
        raise RequestError(None, e.code, e.message) from None
    rid = obj.get("id")
    if not _is_id(rid):
        raise RequestError(None, "bad_request", "id: expected an integer or a string")
    v = obj.get("v")
    if not _is_int(v):
        raise RequestError(rid, "bad_request", "v: expected the protocol version, an integer")
    if v not in SUPPORTED_VERSIONS:
        supported = list(SUPPORTED_VERSIONS)
        message = f"protocol version {v} is not supported; this daemon speaks {supported}"
        raise RequestError(rid, "unsupported_version", message, supported=supported)
    op = obj.get("op")
    if not isinstance(op, str) or not op:
        raise RequestError(rid, "bad_request", "op: expected the operation's name")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise RequestError(rid, "bad_request", "args: expected an object")
    return Request(rid, op, args)


def _check_version(obj: dict[str, Any]) -> None:
    if obj.get("v") != VERSION or not _is_int(obj.get("v")):
        raise OpError("bad_request", f"v: expected {VERSION}, got {obj.get('v')!r}")


def decode_response(line: bytes) -> Response:
    obj = decode_object(line)
    _check_version(obj)
    rid = obj.get("id")
    if rid is not None and not _is_id(rid):
        raise OpError("bad_request", "id: expected an integer, a string or null")
    ok = obj.get("ok")
    if ok is True:
        result = obj.get("result")
        if not isinstance(result, dict):
            raise OpError("bad_request", "result: expected an object")
        return Response(rid, result, None)
    if ok is not False:
        raise OpError("bad_request", "ok: expected true or false")
    error = obj.get("error")
    if not isinstance(error, dict):
        raise OpError("bad_request", "error: expected an object")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise OpError("bad_request", "error: expected text in code and message")
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    return Response(rid, None, OpError(code, message, **details))


def decode_event(line: bytes) -> Event:
    obj = decode_object(line)
    _check_version(obj)
    seq, name, time, data = (obj.get(k) for k in ("seq", "event", "time", "data"))
    if not _is_int(seq) or not isinstance(name, str) or not isinstance(time, str):
        raise OpError("bad_request", "event: expected seq (integer), event and time (text)")
    if not isinstance(data, dict):
        raise OpError("bad_request", "data: expected an object")
    return Event(seq, name, time, data)


# -- framing ----------------------------------------------------------------------------------


class LineBuffer:
    """Bytes as they arrive -> complete lines, without their newline."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield each line completed by `data`; raise OpError("bad_request") once the current
        line is longer than the limit (after yielding the lines before it)."""
        start = len(self._buf)
        self._buf += data
        while (end := self._buf.find(b"\n", start)) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            start = 0
            if len(line) > self._limit:
                raise OpError("bad_request", f"line longer than {self._limit} bytes")
            yield line
        if len(self._buf) > self._limit:
            raise OpError("bad_request", f"line longer than {self._limit} bytes")
