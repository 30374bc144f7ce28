"""TorchServe handler serving a GGUF model with llama.cpp behind an OpenAI-style API.

Routes (the part after /predictions/{model}/{version}/ arrives as the ``url_path`` header):
  v1/chat/completions   chat with the model's chat template, streamed as SSE or whole
  v1/completions        raw prompt completion
  v1/models             the served model
  (none)                the original example's body {prompt, max_tokens, ...}, answered as text

Two batching modes, chosen by model-config.yaml:
- dynamic (default): TorchServe collects up to batchSize requests within maxBatchDelay and hands
  them over at once; they are decoded together (one llama_decode per step over all of them) and
  each gets its own answer. A stream that finishes early is closed while the others go on.
- continuous (``continuousBatching: true``): TorchServe calls the handler once per decode step
  with every running request; a request that arrives while others generate joins at the next
  step, and one whose client went away is missing from the next call and is cancelled.
Streamed requests receive each token as soon as it is decoded. Invalid requests get a 4xx with an
OpenAI error body and cost the others nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from typing import Any

import engine
import openai_protocol as api
from engine import ContextOverflow, EngineConfig, Generation, LlamaEngine, SamplingParams
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes
from ts.protocol.otf_message_handler import create_predict_response

logger = logging.getLogger(__name__)

WORKER_INFO_MARK = "llama.cpp worker ready:"
SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


@dataclasses.dataclass
class Job:
    """One request of the batch and what has been sent for it."""

    idx: int
    request: api.ParsedRequest
    gen: Generation
    response_id: str
    created: int
    closed: bool = False  # its HTTP response has been completed
    body: bytes = b""  # what is still to be sent
    started: bool = False  # its HTTP headers have gone out (a stream is open)


class LlamaCppHandler:
    """Loads the model once per worker; answers batches of OpenAI-style requests."""

    def __init__(self) -> None:
        self.initialized = False
        self.engine: LlamaEngine | None = None

    # -- loading ---------------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir") or "."
        config = (context.model_yaml_config or {}).get("handler", {}) or {}
        self.model_name = context.model_name
        model_path = str(config.get("model_path") or "")
        if not model_path:
            raise ValueError("model-config.yaml has no handler.model_path")
        if not os.path.isabs(model_path):
            model_path = os.path.join(model_dir, model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"GGUF file not found: {model_path}")
        batch_size = int(props.get("batch_size") or 1)
        self.continuous = bool((context.model_yaml_config or {}).get("continuousBatching", False))
        self.running: dict[str, Job] = {}  # continuous mode: request id -> job
        gpu_id = props.get("gpu_id")
        rpc_servers = tuple(str(server) for server in config.get("rpc_servers") or ())
        one_gpu = gpu_id is not None and int(gpu_id) >= 0 and not rpc_servers
        self.engine = LlamaEngine(
            EngineConfig(
                model_path=model_path,
                n_ctx=int(config.get("n_ctx", 2048)),
                n_threads=int(config.get("n_threads", 2)),
                n_gpu_layers=int(config.get("n_gpu_layers", -1)),
                max_sequences=max(batch_size, int(config.get("max_sequences", 1))),
                n_batch=int(config.get("n_batch", 512)),
                # TorchServe hands each worker a GPU id: worker N runs whole on GPU N, unless the
                # config splits the model over several devices.
                main_gpu=int(config.get("main_gpu", gpu_id if gpu_id is not None else 0) or 0),
                rpc_servers=rpc_servers,
                split_mode=str(config.get("split_mode", "none" if one_gpu else "layer")),
                tensor_split=tuple(float(x) for x in config.get("tensor_split") or ()),
                kv_unified=bool(config.get("kv_unified", False)),
                prefix_cache=bool(config.get("prefix_cache", True)),
            )
        )
        template = config.get("chat_template") or self.engine.metadata("tokenizer.chat_template")
        if not template:
            raise ValueError(
                "The GGUF file has no chat template; set handler.chat_template in model-config.yaml"
            )
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.engine.eos_token,
            bos_token=self.engine.bos_token,
            add_generation_prompt=True,
        )
        seed = config.get("seed")
        # Requests without a seed draw one from this generator: replies vary, runs are repeatable.
        self._seeds = random.Random(None if seed in (None, -1) else int(seed))
        self.info = self.engine.describe()
        self._metrics = _HandlerMetrics(context, self.model_name)
        # One line per worker that the console reads to show backend, devices and layers.
        logger.info("%s %s", WORKER_INFO_MARK, json.dumps({**self.info, "pid": os.getpid()}))
        self.initialized = True

    # -- serving ---------------------------------------------------------------------------

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        if self.continuous:
            return self._handle_step(data, context)
        return self._handle_batch(data, context)

    def _handle_batch(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Dynamic batching: decode the whole batch to the end, streaming as tokens come."""
        assert self.engine is not None
        results: list[Any] = [b""] * len(data)
        jobs: list[Job] = []
        for idx, row in enumerate(data):
            try:
                job = self._start(idx, row, context)
            except api.RequestError as err:
                self._reply_error(context, idx, err, results)
                continue
            if job is None:  # answered at once (v1/models)
                results[idx] = self._models_body()
                context.set_response_content_type(idx, JSON_TYPE)
                continue
            jobs.append(job)

        try:
            self._run(jobs, context)
        finally:
            for job in jobs:
                if not job.gen.finished:
                    self.engine.cancel(job.gen)
            context.stopping_criteria = None

        for job in jobs:
            self._metrics.record(job.gen)
            if job.closed:
                # Already completed on the wire: leave it out of TorchServe's final message.
                context.request_ids.pop(job.idx, None)
            else:
                results[job.idx] = job.body if job.request.stream else self._whole(job)
        return results

    def _handle_step(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Continuous batching: admit new requests, decode one step, answer every request."""
        assert self.engine is not None
        ids = [context.request_ids[idx] for idx in range(len(data))]
        for request_id in set(self.running) - set(ids):
            # TorchServe drops a request whose client disconnected: stop spending compute on it.
            job = self.running.pop(request_id)
            logger.info("Request %s left (client gone); cancelling it", request_id)
            self.engine.cancel(job.gen)
            self._metrics.record(job.gen)
        results: list[Any] = [b""] * len(data)
        stream_next: dict[int, bool | None] = {}
        for idx, row in enumerate(data):
            if ids[idx] in self.running:
                continue
            stream_next[idx] = None  # answered now, in one piece
            try:
                job = self._start(idx, row, context)
            except api.RequestError as err:
                self._reply_error(context, idx, err, results)
                continue
            if job is None:
                results[idx] = self._models_body()
                context.set_response_content_type(idx, JSON_TYPE)
                continue
            self.running[ids[idx]] = job
        if self.engine.active:
            self.engine.step()
        for idx, request_id in enumerate(ids):
            job = self.running.get(request_id)
            if job is None:
                continue
            job.idx = idx
            self._set_content_type(context, job)
            if job.request.stream:
                job.body += self._stream_bytes(job)
            if not job.gen.finished:
                results[idx], job.body = job.body, b""
                stream_next[idx] = True  # keeps the HTTP response open
                job.started = True
                continue
            del self.running[request_id]
            self._metrics.record(job.gen)
            results[idx] = job.body if job.request.stream else self._whole(job)
            stream_next[idx] = False if job.started else None
        # TorchServe reads ts_stream_next per request from these (None: a plain, whole response).
        context.stopping_criteria = {
            idx: (lambda _, more=more: None if more is None else not more)
            for idx, more in stream_next.items()
        }
        return results

    def _models_body(self) -> bytes:
        return json.dumps(api.model_list(self.model_name, "tschat", self.info)).encode()

    def _set_content_type(self, context: Any, job: Job) -> None:
        if job.request.stream:
            context.set_response_content_type(job.idx, SSE_TYPE)
            context.set_response_header(job.idx, "Cache-Control", "no-cache")
        elif job.request.endpoint == api.LEGACY:
            context.set_response_content_type(job.idx, TEXT_TYPE)
        else:
            context.set_response_content_type(job.idx, JSON_TYPE)

    def _start(self, idx: int, row: dict[str, Any], context: Any) -> Job | None:
        assert self.engine is not None
        endpoint = api.route(context.get_request_header(idx, "url_path"))
        if endpoint == api.MODELS:
            return None
        body = row.get("body")
        if body is None:
            body = row.get("data")
        request = api.parse(endpoint, api.decode_body(body))
        if endpoint == api.CHAT:
            formatted = self.formatter(messages=[dict(m) for m in request.messages])
            tokens = self.engine.tokenize(formatted.prompt, add_special=not formatted.added_special)
        else:
            tokens = self.engine.tokenize(request.prompt, add_special=True)
        s = request.sampling
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            min_p=s.min_p,
            repeat_penalty=s.repeat_penalty,
            seed=s.seed if s.seed is not None else self._seeds.getrandbits(32),
            stop=s.stop,
        )
        try:
            gen = self.engine.start(tokens, params)
        except ContextOverflow as exc:
            raise api.RequestError(
                str(exc),
                "messages" if endpoint == api.CHAT else "prompt",
                code="context_length_exceeded",
            ) from None
        job = Job(idx, request, gen, api.new_id(endpoint), int(time.time()))
        self._set_content_type(context, job)
        if request.stream:
            job.body = api.sse(self._chunk(job, "", first=True))
        return job

    def _run(self, jobs: list[Job], context: Any) -> None:
        """Decode all jobs together, sending each streamed token as soon as it exists."""
        assert self.engine is not None
        streams = [j for j in jobs if j.request.stream]
        if streams:
            # Send the headers and the role chunk now: clients see the stream open before prefill.
            self._send(context, streams, closing=set())
        by_gen = {id(j.gen): j for j in jobs}
        for changed in self.engine.generate([j.gen for j in jobs]):
            for gen in changed:
                job = by_gen[id(gen)]
                if job.request.stream:
                    job.body += self._stream_bytes(job)
            open_streams = [j for j in streams if not j.closed]
            running = [j for j in open_streams if not j.gen.finished]
            if not running:
                continue  # what is left goes out with the final message
            closing = {j.idx for j in open_streams if j.gen.finished}
            ready = [j for j in open_streams if j.body or j.idx in closing]
            if not ready:
                continue
            if not any(j.idx not in closing for j in ready):
                ready.append(running[0])  # a still-open stream keeps TorchServe's batch alive
            self._send(context, ready, closing)

    def _send(self, context: Any, jobs: list[Job], closing: set[int]) -> None:
        """Send one message to the frontend with a piece of each job's stream."""
        req_ids = {j.idx: context.request_ids[j.idx] for j in jobs}
        payload = {j.idx: j.body for j in jobs}
        context.stopping_criteria = {j.idx: (lambda _, done=j.idx in closing: done) for j in jobs}
        msg = create_predict_response(
            payload, req_ids, "Intermediate Prediction success", 200, context
        )
        context.cl_socket.sendall(msg)
        for j in jobs:
            j.body = b""
            j.closed = j.idx in closing

    def _stream_bytes(self, job: Job) -> bytes:
        gen = job.gen
        out = b""
        delta = gen.take_delta()
        if delta:
            out += api.sse(self._chunk(job, delta))
        if gen.finished:
            final = self._chunk(job, None, finish_reason=_finish_reason(gen))
            if job.request.include_usage:
                final["usage"] = api.usage(
                    len(gen.prompt_tokens), gen.completion_tokens, gen.cached_tokens
                )
                final["timings"] = _timings(gen)
            out += api.sse(final) + api.sse("[DONE]")
        return out

    def _chunk(
        self, job: Job, text: str | None, first: bool = False, finish_reason: str | None = None
    ) -> dict[str, Any]:
        return api.chunk(
            job.request.endpoint,
            job.response_id,
            job.created,
            self.model_name,
            text,
            finish_reason=finish_reason,
            first=first,
        )

    def _whole(self, job: Job) -> bytes:
        gen = job.gen
        if job.request.endpoint == api.LEGACY:
            # The original example answered with the prompt and its continuation as plain text.
            return (job.request.prompt + gen.text).encode("utf-8")
        body = api.completion(
            job.request.endpoint,
            job.response_id,
            job.created,
            self.model_name,
            gen.text,
            _finish_reason(gen),
            _usage(gen),
            _timings(gen),
        )
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _reply_error(
        self, context: Any, idx: int, err: api.RequestError, results: list[Any]
    ) -> None:
        logger.info("Refused request %s: %s", context.get_request_id(idx), err.message)
        context.set_response_status(err.status, "", idx)
        context.set_response_content_type(idx, JSON_TYPE)
        results[idx] = json.dumps(err.body()).encode("utf-8")
        self._metrics.refused()


def _usage(gen: Generation) -> dict[str, Any]:
    return api.usage(len(gen.prompt_tokens), gen.completion_tokens, gen.cached_tokens)


def _finish_reason(gen: Generation) -> str:
    return (
        engine.STOP if gen.finish_reason == engine.CANCELLED else (gen.finish_reason or engine.STOP)
    )


def _timings(gen: Generation) -> dict[str, float | None]:
    tps = gen.tokens_per_second
    ttft = gen.ttft_ms
    return {
        "ttft_ms": round(ttft, 2) if ttft is not None else None,
        "tokens_per_second": round(tps, 2) if tps is not None else None,
    }


class _HandlerMetrics:
    """The handler's own metrics, exported through TorchServe's metrics API."""

    def __init__(self, context: Any, model_name: str) -> None:
        self.model_name = model_name
        self.generated = _metric(context, "GeneratedTokens", "count", MetricTypes.COUNTER)
        self.prompt = _metric(context, "PromptTokens", "count", MetricTypes.COUNTER)
        self.ttft = _metric(context, "TimeToFirstToken", "ms", MetricTypes.GAUGE)
        self.tps = _metric(context, "TokensPerSecond", "", MetricTypes.GAUGE)
        self.bad = _metric(context, "RefusedRequests", "count", MetricTypes.COUNTER)

    def record(self, gen: Generation) -> None:
        dims = [self.model_name]
        self.generated.add_or_update(gen.completion_tokens, dims)
        self.prompt.add_or_update(len(gen.prompt_tokens), dims)
        if gen.ttft_ms is not None:
            self.ttft.add_or_update(round(gen.ttft_ms, 2), dims)
        if gen.tokens_per_second is not None:
            self.tps.add_or_update(round(gen.tokens_per_second, 2), dims)

    def refused(self) -> None:
        self.bad.add_or_update(1, [self.model_name])


def _metric(context: Any, name: str, unit: str, kind: MetricTypes) -> Any:
    """The metric declared in TorchServe's metrics config, or a new one if it is not there."""
    try:
        return context.metrics.get_metric(name, kind)
    except MetricsCacheKeyError:
        return context.metrics.add_metric_to_cache(name, unit, ["ModelName"], kind)


_service = LlamaCppHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """TorchServe's entry point: load on the first call (data is None), then serve batches."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
