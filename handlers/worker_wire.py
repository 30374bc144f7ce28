"""TorchServe's worker protocol, read from memory instead of one system call per field.

The frontend sends each call to the worker as one message: a command byte, then for each request
its id, its HTTP headers and its inputs, every field a 4-byte length and its bytes. TorchServe's
own reader (``ts.protocol.otf_message_handler.retrieve_msg``) asks the socket for every length
and every field on its own. In continuous batching the frontend calls the worker once per decode
step and sends every running request's headers again each time (its inputs only the first
time), so a call for eight clients whose SDK sends a dozen headers costs about 400 ``recv``
calls and 0.6 ms of Python a decode step, where parsing the same bytes from one buffer takes
0.12 ms (README, "Each call read from memory"). It also logs a line per call, which the
worker's log then carries to the frontend.

:class:`WireReader` takes whatever the socket holds in one ``recv`` and parses the message from
that buffer. It returns what TorchServe's reader returns, field for field (a test compares the
two on the same bytes, delivered whole and a byte at a time), and it leaves the worker as
TorchServe's does when the frontend closes the connection. :func:`install` makes the worker's
loop use it from the first call after the model is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import sys
from typing import Any

# The frame's markers, from TorchServe's own reader (already loaded in the worker).
from ts.protocol.otf_message_handler import END_OF_LIST, LOAD_MSG, PREDICT_MSG

RECV_BYTES = 65536
_INT = struct.Struct("!i")


class WireReader:
    """Messages from the frontend, parsed from what one ``recv`` returns."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self._buf = b""
        self._pos = 0

    def _fill(self, need: int) -> None:
        """Keep receiving until ``need`` unread bytes are buffered."""
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        while have < need:
            packet = self.conn.recv(max(RECV_BYTES, need - have))
            if not packet:  # as TorchServe's reader does
                logging.info("Frontend disconnected.")
                sys.exit(0)
            parts.append(packet)
            have += len(packet)
        self._buf = b"".join(parts)
        self._pos = 0

    def take(self, length: int) -> bytes:
        if len(self._buf) - self._pos < length:
            self._fill(length)
        start = self._pos
        self._pos = start + length
        return self._buf[start : self._pos]

    def int(self) -> int:
        if len(self._buf) - self._pos < 4:
            self._fill(4)
        value: int = _INT.unpack_from(self._buf, self._pos)[0]
        self._pos += 4
        return value

    def field(self) -> bytes | None:
        """A length-prefixed field; None where a list ends."""
        length = self.int()
        return None if length == END_OF_LIST else self.take(length)

    # -- messages, as ``otf_message_handler`` lays them out

    def message(self) -> tuple[bytes, Any]:
        """(command, message): what ``retrieve_msg`` returns for the same bytes."""
        cmd = self.take(1)
        if cmd == PREDICT_MSG:
            return cmd, self._inference()
        if cmd == LOAD_MSG:
            return cmd, self._load()
        raise ValueError(f"Invalid command: {cmd!r}")

    def _inference(self) -> list[dict[str, Any]]:
        requests = []
        while (request_id := self.field()) is not None:
            headers = []
            while (name := self.field()) is not None:
                headers.append({"name": name, "value": self.take(self.int())})
            inputs = []
            while (name := self.field()) is not None:
                content_type = self.take(self.int()).decode("utf-8")
                value = bytearray(self.take(self.int()))
                inputs.append(
                    {
                        "name": name.decode("utf-8"),
                        "contentType": content_type,
                        "value": _decoded(value, content_type),
                    }
                )
            requests.append({"requestId": request_id, "headers": headers, "parameters": inputs})
        return requests

    def _load(self) -> dict[str, Any]:
        msg: dict[str, Any] = {}
        msg["modelName"] = self.take(self.int())
        msg["modelPath"] = self.take(self.int())
        msg["batchSize"] = self.int()
        msg["handler"] = self.take(self.int())
        gpu_id = self.int()
        if gpu_id >= 0:
            msg["gpu"] = gpu_id
        msg["envelope"] = self.take(self.int())
        msg["limitMaxImagePixels"] = self.take(1) != b"\x00"
        return msg


def _decoded(value: bytearray, content_type: str) -> Any:
    """An input's value as TorchServe's reader gives it: JSON parsed, text decoded, else bytes."""
    if os.environ.get("TS_DECODE_INPUT_REQUEST", "true") != "true":
        return value
    try:
        if content_type == "application/json":
            return json.loads(value.decode("utf-8"))
        if content_type.startswith("text"):
            return value.decode("utf-8")
    except Exception:  # noqa: BLE001 - TorchServe forwards the raw bytes, and so do we
        logging.warning("Failed decoding of input data. Forwarding encoded payload", exc_info=True)
    return value


def install() -> bool:
    """Make TorchServe's worker loop read its messages with a :class:`WireReader`.

    Called while the worker loads the model, after TorchServe's reader has taken the whole load
    message, so the new reader starts at a message's first byte. The loop is the worker's main
    module (``ts/model_service_worker.py`` run as a script), so that is where its reader is
    replaced. Returns False (and changes nothing) where no worker loop is running, as for a
    handler loaded outside TorchServe.
    """
    worker = [
        module
        for module in (sys.modules.get("__main__"), sys.modules.get("ts.model_service_worker"))
        if module is not None
        and hasattr(module, "TorchModelServiceWorker")
        and hasattr(module, "retrieve_msg")
    ]
    if not worker:
        return False
    reader: WireReader | None = None

    def retrieve_msg(conn: socket.socket) -> tuple[bytes, Any]:
        nonlocal reader
        if reader is None or reader.conn is not conn:  # the worker has one connection
            reader = WireReader(conn)
        return reader.message()

    for module in worker:
        setattr(module, "retrieve_msg", retrieve_msg)  # noqa: B010 - a module's global
    return True
