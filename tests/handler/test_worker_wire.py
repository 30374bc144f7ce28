"""The worker's reader of frontend messages gives what TorchServe's own reader gives.

Messages are laid out as TorchServe's frontend encodes them (``ModelRequestEncoder``): a command
byte, then per request its id, its headers and its inputs (none once the request is cached in
the worker, as in continuous batching), every field a 4-byte length and its bytes.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import types
from collections.abc import Iterable

import pytest
import worker_wire
from ts.protocol import otf_message_handler

HEADERS = {
    "host": "127.0.0.1:8080",
    "authorization": "Bearer 0123456789abcdef",
    "content-type": "application/json",
    "user-agent": "OpenAI/Python 1.99.0",
    "x-stainless-retry-count": "0",
    "url_path": "v1/chat/completions",
    "empty": "",
}


def field(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack("!i", len(raw)) + raw


def request(rid: str, headers: dict[str, str], inputs: Iterable[tuple[str, str, bytes]]) -> bytes:
    out = field(rid)
    for name, value in headers.items():
        out += field(name) + field(value)
    out += struct.pack("!i", -1)
    for name, content_type, value in inputs:
        out += field(name) + field(content_type) + field(value)
    return out + struct.pack("!i", -1)


def inference(*requests: bytes) -> bytes:
    return b"I" + b"".join(requests) + struct.pack("!i", -1)


def load(gpu: int) -> bytes:
    return (
        b"L"
        + field("smollm2")
        + field("/tmp/models/abc")
        + struct.pack("!i", 16)
        + field("llama_cpp_handler")
        + struct.pack("!i", gpu)
        + field("")
        + b"\x01"
    )


MESSAGES = {
    "a new chat request": inference(
        request("r-1", HEADERS, [("body", "application/json", b'{"messages": [1, "\xc3\xa9"]}')])
    ),
    "eight running requests, inputs cached": inference(
        *(request(f"r-{n}", HEADERS, []) for n in range(8))
    ),
    "text, bytes, bad JSON, bad UTF-8, empty": inference(
        request(
            "r-2",
            {"url_path": ""},
            [
                ("data", "text/plain", "caf\xe9".encode()),
                ("file", "application/octet-stream", bytes(range(256))),
                ("body", "application/json", b"{not json"),
                ("text", "text/plain", b"\xff\xfe"),
                ("nothing", "", b""),
            ],
        ),
        request("r-3", {}, [("body", "application/json", b"[]")]),
    ),
    "no requests": inference(),
    "load, CPU": load(-1),
    "load, GPU 1": load(1),
}


class Chunked:
    """A connection that hands out at most ``size`` bytes per recv, then reports a close."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data = data
        self.size = size
        self.calls = 0

    def recv(self, n: int) -> bytes:
        self.calls += 1
        piece, self.data = self.data[: min(n, self.size)], self.data[min(n, self.size) :]
        return piece


def theirs(data: bytes) -> tuple[bytes, object]:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        return otf_message_handler.retrieve_msg(b)


@pytest.mark.parametrize("name", list(MESSAGES))
@pytest.mark.parametrize("size", [1, 3, 65536])
def test_it_reads_what_torchserves_reader_reads(name: str, size: int) -> None:
    data = MESSAGES[name]
    conn = Chunked(data, size)
    assert worker_wire.WireReader(conn).message() == theirs(data)  # type: ignore[arg-type]
    assert conn.data == b""  # every byte of the message taken, and no more asked for


def test_messages_in_one_packet_are_read_in_turn_with_one_recv() -> None:
    data = b"".join(MESSAGES.values())
    conn = Chunked(data, len(data))
    reader = worker_wire.WireReader(conn)  # type: ignore[arg-type]
    assert [reader.message() for _ in MESSAGES] == [theirs(m) for m in MESSAGES.values()]
    assert conn.calls == 1


def test_inputs_are_left_undecoded_when_torchserve_is_told_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", "false")
    data = MESSAGES["a new chat request"]
    cmd, msg = worker_wire.WireReader(Chunked(data, 7)).message()  # type: ignore[arg-type]
    assert (cmd, msg) == theirs(data)
    assert msg[0]["parameters"][0]["value"] == b'{"messages": [1, "\xc3\xa9"]}'


def test_a_closed_connection_ends_the_worker_as_torchserve_does() -> None:
    data = MESSAGES["a new chat request"][:-5]  # the frontend went away mid-message
    with pytest.raises(SystemExit) as ended:
        worker_wire.WireReader(Chunked(data, 4)).message()  # type: ignore[arg-type]
    assert ended.value.code == 0


def test_an_unknown_command_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid command"):
        worker_wire.WireReader(Chunked(b"X", 1)).message()  # type: ignore[arg-type]


def test_installed_the_worker_loop_reads_with_it_and_logs_nothing_per_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # TorchServe runs ts/model_service_worker.py as a script: its loop lives in __main__.
    worker = types.ModuleType("__main__")
    worker.TorchModelServiceWorker = object  # type: ignore[attr-defined]
    worker.retrieve_msg = otf_message_handler.retrieve_msg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", worker)
    monkeypatch.delitem(sys.modules, "ts.model_service_worker", raising=False)
    assert worker_wire.install()
    expected = [theirs(data) for data in MESSAGES.values()]
    a, b = socket.socketpair()
    with a, b, caplog.at_level(logging.INFO):
        for data, message in zip(MESSAGES.values(), expected, strict=True):
            a.sendall(data)
            assert worker.retrieve_msg(b) == message  # type: ignore[attr-defined]
    assert "Backend received inference" not in caplog.text


def test_outside_a_worker_nothing_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    monkeypatch.delitem(sys.modules, "ts.model_service_worker", raising=False)
    assert not worker_wire.install()
