"""Hostile input against a real TorchServe: every field, in both batching modes.

For every request field of the contract: values of the wrong type, integers of hundreds of
digits, floats that overflow, huge lists and strings, and a body of 100,000 messages. Each gets
its 4xx while streams on the same worker go on: they end with [DONE], with no gap of a second
between chunks; the worker is the same process afterwards and every KV slot is free.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tschat import contract
from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient
from tschat.ops import process
from tschat.ops.serving import ServingRegistry
from tschat.settings import REPO_ROOT

pytestmark = pytest.mark.integration

ROUTES = {
    contract.CHAT: "v1/chat/completions",
    contract.COMPLETION: "v1/completions",
    contract.LEGACY: "",
    contract.TOKENIZE: "v1/tokenize",
    contract.DETOKENIZE: "v1/detokenize",
}
# Greedy, so that a drawn answer length (max_tokens 2,000, say) ends where "Hi" ends, in a few
# tokens, instead of wherever a random continuation stops.
BASE = {
    contract.CHAT: {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "temperature": 0,
    },
    contract.COMPLETION: {"prompt": "Hi", "max_tokens": 2, "temperature": 0},
    contract.LEGACY: {"prompt": "Hi", "max_tokens": 2, "temperature": 0},
    contract.TOKENIZE: {"content": "Hi"},
    contract.DETOKENIZE: {"tokens": [1, 2]},
}
OVERFLOW = "__overflow__"  # replaced by a JSON number too big for a float
BATCH = 8
MAX_GAP_S = 1.0


def wrong_types(spec: contract.Field) -> list[Any]:
    """Values whose JSON type the field does not take (at its first endpoint)."""
    if spec.name == "logprobs":  # true or false for chat, a count for completions
        return ["text", 2.5, [True], {"a": 1}]
    if spec.kind in ("number", "integer"):
        return ["text", True, [1], {"a": 1}] + ([2.5] if spec.kind == "integer" else [])
    if spec.kind == "boolean":
        return ["text", 1, [True], {"a": 1}]
    if spec.kind == "string":
        return [7, True, ["text"], {"a": "b"}]
    return [7, 2.5, True]  # structured values: never a bare number or boolean


def hostile_values(spec: contract.Field) -> list[tuple[str, Any]]:
    values = [(f"wrong type {type(v).__name__}", v) for v in wrong_types(spec)]
    values += [
        ("300-digit integer", 10**300),
        ("negative 300-digit integer", -(10**300)),
        ("overflowing float", OVERFLOW),
        ("huge list", [0] * 100_000),
        ("huge string", "x" * 1_000_000),
    ]
    if spec.treatment == contract.REFUSED:
        values.append(("any value", "x"))
    return values


def body_bytes(endpoint: str, field: str, value: Any) -> bytes:
    text = json.dumps({**BASE[endpoint], field: value})
    return text.replace(json.dumps(OVERFLOW), "1e400").encode()


CASES = [
    (endpoint, spec.name, label, value)
    for spec in contract.FIELDS
    for endpoint in spec.endpoints[:1]
    for label, value in hostile_values(spec)
]
WHOLE_BODIES = [
    (
        "100,000 messages",
        contract.CHAT,
        json.dumps({"messages": [{"role": "user", "content": "x"}] * 100_000}),
    ),
    ("nested 100,000 deep", contract.CHAT, "[" * 100_000 + "]" * 100_000),
]


@dataclass
class Served:
    mode: str
    settings: Any
    keys: KeyStore
    management: ManagementClient
    model: str
    pid: int | None = None  # the worker's, when the model was registered

    def url(self, path: str) -> str:
        return f"{self.settings.inference_url}/predictions/{self.model}/1.0/{path}"

    def post(self, path: str, data: bytes, stream: bool = False) -> requests.Response:
        return requests.post(
            self.url(path),
            data=data,
            headers={
                "Authorization": f"Bearer {self.keys.key('inference')}",
                "Content-Type": "application/json",
            },
            timeout=120,
            stream=stream,
        )

    def worker_pid(self) -> int | None:
        (worker,) = self.management.describe_model(self.model).workers
        return worker.pid

    def slots(self) -> dict[str, int]:
        response = requests.get(
            self.url("v1/models"),
            headers={"Authorization": f"Bearer {self.keys.key('inference')}"},
            timeout=30,
        )
        return response.json()["data"][0]["meta"]["slots"]


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("hostile")
    settings = helpers.make_settings(root)
    settings.model_store.mkdir(parents=True)
    for mode in ("continuous", "dynamic"):
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "package_model.sh"), "--output-dir", str(settings.model_store)]
            + ["--name", f"smollm2-{mode}", f"--{mode}-batching", "--batch-size", str(BATCH)]
            + ["--max-batch-delay", "300" if mode == "dynamic" else "10"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    process.start(settings)
    try:
        yield settings
    finally:
        process.stop(settings)


@pytest.fixture(scope="module", params=["continuous", "dynamic"])
def served(request: pytest.FixtureRequest, torchserve: Any) -> Iterator[Served]:
    keys = KeyStore(torchserve)
    management = ManagementClient(torchserve, keys)
    registry = ServingRegistry(management, torchserve.model_store)
    name = f"smollm2-{request.param}"
    registry.register(f"{name}.mar", initial_workers=1)
    registry.wait_until_ready(name, timeout=180)
    served = Served(request.param, torchserve, keys, management, name)
    served.pid = served.worker_pid()
    try:
        yield served
    finally:
        registry.unregister(name)


class StreamWatch:
    """Records what each stream looked like; in the background, streams one answer after another.

    Without the background streams, only the streams a test sends itself with one() are watched:
    with dynamic batching a batch runs to its end before the next starts, so a background stream
    would only make each of the test's batches wait for it.
    """

    def __init__(self, served: Served, background: bool = True) -> None:
        self.served = served
        self.background = background
        self.stop = threading.Event()
        self.results: list[tuple[bool, float, int]] = []  # (ended with [DONE], longest gap, chunks)
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        body = {
            "messages": [{"role": "user", "content": "Count slowly from one to one hundred."}],
            "max_tokens": 60,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        while not self.stop.is_set():
            self.results.append(self.one(json.dumps(body).encode()))

    def one(self, data: bytes) -> tuple[bool, float, int]:
        response = self.served.post("v1/chat/completions", data, stream=True)
        assert response.status_code == 200, response.text
        last = time.perf_counter()
        gap, chunks, done = 0.0, 0, False
        for line in response.iter_lines():
            if not line:
                continue
            now = time.perf_counter()
            gap, last = max(gap, now - last), now
            chunks += 1
            done = line == b"data: [DONE]"
        return done, gap, chunks

    def __enter__(self) -> StreamWatch:
        if self.background:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.background:
            self.thread.join(timeout=120)


def check_refused(response: requests.Response, what: str) -> None:
    assert 400 <= response.status_code < 500, (
        f"{what}: {response.status_code} {response.text[:300]}"
    )
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error", what


def test_every_field_refuses_hostile_values_while_streams_go_on(served: Served) -> None:
    requests_ = [
        (f"{name} = {label} ({endpoint})", ROUTES[endpoint], body_bytes(endpoint, name, value))
        for endpoint, name, label, value in CASES
    ] + [(label, ROUTES[endpoint], text.encode()) for label, endpoint, text in WHOLE_BODIES]

    def send(case: tuple[str, str, bytes]) -> None:
        what, path, data = case
        check_refused(served.post(path, data), what)

    with StreamWatch(served, background=served.mode == "continuous") as watch:
        if served.mode == "continuous":
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(send, requests_))
        else:
            # Dynamic batching: a stream and seven hostile requests arrive within the batch
            # delay, so they are handed to the handler as one batch.
            for start in range(0, len(requests_), BATCH - 1):
                group = requests_[start : start + BATCH - 1]
                with ThreadPoolExecutor(BATCH) as pool:
                    stream = pool.submit(
                        watch.one,
                        json.dumps(
                            {
                                "messages": [{"role": "user", "content": "Tell me about rivers."}],
                                "max_tokens": 16,
                                "temperature": 0,
                                "ignore_eos": True,
                                "stream": True,
                            }
                        ).encode(),
                    )
                    list(pool.map(send, group))
                    watch.results.append(stream.result())
    assert watch.results, "no stream ran beside the hostile requests"
    for done, gap, chunks in watch.results:
        assert done, "a stream ended without [DONE]"
        assert gap < MAX_GAP_S, f"a stream stalled {gap:.2f} s between chunks"
        assert chunks > 10
    assert served.worker_pid() == served.pid, "the worker died and was restarted"
    assert served.slots() == {"total": BATCH, "busy": 0, "queued": 0}


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_values_of_every_field_never_hurt_the_worker(
    served: Served, data: st.DataObject
) -> None:
    spec = data.draw(st.sampled_from(contract.FIELDS), label="field")
    endpoint = data.draw(st.sampled_from(spec.endpoints), label="endpoint")
    value = data.draw(JSON_VALUES, label="value")
    response = served.post(
        ROUTES[endpoint], json.dumps({**BASE[endpoint], spec.name: value}).encode()
    )
    assert response.status_code in (200, 400, 404), response.text[:300]
    if response.status_code != 200:
        check_refused(response, f"{spec.name}={value!r}")


def test_worker_and_slots_after_the_random_values(served: Served) -> None:
    (worker,) = served.management.describe_model(served.model).workers
    assert worker.ready and worker.pid == served.pid, "the worker died and was restarted"
    assert served.slots() == {"total": BATCH, "busy": 0, "queued": 0}


SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}},
        "required": ["name"],
    },
    {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
    {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
    },
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "rank": {"type": "number"}},
        "required": ["city", "rank"],
    },
    {"type": "string", "pattern": "^[A-Z][a-z]{2,8}$"},
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}
        },
        "required": ["tags"],
    },
]


def test_eight_schemas_in_one_batch_each_validate(served: Served) -> None:
    def ask(i: int) -> tuple[int, dict[str, Any]]:
        body = {
            "messages": [{"role": "user", "content": "Answer in JSON about your favourite city."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i]},
            },
            "temperature": 0.7,
            "seed": i,
            "max_tokens": 120,
        }
        response = served.post("v1/chat/completions", json.dumps(body).encode())
        assert response.status_code == 200, response.text
        return i, response.json()

    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        answers = list(pool.map(ask, range(len(SCHEMAS))))
    for i, answer in answers:
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMAS[i])
