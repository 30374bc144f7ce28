"""TorchServe handler serving a GGUF model with llama.cpp behind an OpenAI-style API.

Routes (the part after /predictions/{model}/{version}/ arrives as the ``url_path`` header):
  v1/chat/completions   chat with the model's chat template, streamed as SSE or whole
  v1/completions        raw prompt completion
  v1/models             the served model, its engine and its KV slots
  v1/tokenize           text or a chat (template applied) to tokens
  v1/detokenize         tokens to text
  (none)                the original example's body {prompt, max_tokens, ...}, answered as text

Every request field is validated by the contract module (``contract.parse``): it is honoured or
refused with a 400 naming it. Structured answers (``response_format``, ``grammar``, forced tool
calls) are sampled under a grammar in the request's own sampler, so requests with different
schemas share one batch.

Two batching modes, chosen by model-config.yaml:
- dynamic (default): TorchServe collects up to batchSize requests within maxBatchDelay and hands
  them over at once; they are decoded together (one llama_decode per step over all of them) and
  each gets its own answer. A stream that finishes early is closed while the others go on.
- continuous (``continuousBatching: true``): TorchServe calls the handler once per decode step
  with every running request; a request that arrives while others generate joins at the next
  step, and one whose client went away is missing from the next call and is cancelled.
Streamed requests receive each token as soon as it is decoded. A request's failure is its own:
whatever it holds, it gets its own 4xx (or 500), never an exception that reaches the others, and
the work it may cost before it is refused is bounded by the context window.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import contract
import engine
import openai_protocol as api
import worker_wire
from chat_prompt import ChatPrompt
from contract import (
    CHAT,
    COMPLETION,
    DETOKENIZE,
    LEGACY,
    PROFILE_MARK,
    TOKENIZE,
    WORKER_INFO_MARK,
    Request,
    RequestError,
)
from engine import ContextOverflow, EngineConfig, Generation, GrammarError, LlamaEngine
from structured import ParsedCall, ToolCallReader, output_grammar, tool_call_grammar
from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes
from ts.protocol.otf_message_handler import create_predict_response
from ts.service import PREDICTION_METRIC

logger = logging.getLogger(__name__)

PROFILE_EVERY_S = 10.0  # and whenever the worker falls idle
# TorchServe's metric of each handler call (PREDICTION_METRIC, one decode step in continuous
# batching): written as the mean of the calls in each second, and when the worker falls idle.
PREDICTION_TIME_EVERY_S = 1.0
SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


@dataclasses.dataclass
class Answer:
    """One choice of a request: its generation and what has been written of it."""

    index: int
    gen: Generation
    reader: ToolCallReader | None = None  # when tools may be called
    echo: str = ""  # text shown before the answer (completions' echo, the original body)
    offset: int = 0  # characters written so far, for completions' text_offset
    content: str = ""  # the text outside tool calls
    calls: list[ParsedCall] = dataclasses.field(default_factory=list)
    entries: list[api.Entry] = dataclasses.field(default_factory=list)
    done: bool = False  # its last chunk has been written


@dataclasses.dataclass
class Job:
    """One request of the batch and what has been sent for it."""

    idx: int
    request: Request
    answers: list[Answer]
    prompt_tokens: int
    response_id: str
    created: int
    closed: bool = False  # its HTTP response has been completed
    body: bytes = b""  # what is still to be sent
    started: bool = False  # its HTTP headers have gone out (a stream is open)
    ended: bool = False  # the stream's last events (usage, [DONE]) have been written
    failed: bool = False  # answering it raised: it was ended with an error of its own

    @property
    def finished(self) -> bool:
        return self.failed or all(a.gen.finished for a in self.answers)

    @property
    def plain_text(self) -> bool:
        """The original body, one answer, no logprobs: answered as plain text, as it always was.

        With logprobs or several answers it is answered as v1/completions is, prompt included.
        """
        request = self.request
        return request.endpoint == LEGACY and request.logprobs is None and len(self.answers) == 1

    @property
    def wire_endpoint(self) -> str:
        """The format of the answer: the original body with logprobs is a completion."""
        return COMPLETION if self.request.endpoint == LEGACY else self.request.endpoint


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
        self._calls = _CallTimes()
        gpu_id = props.get("gpu_id")
        rpc_servers = tuple(str(server) for server in config.get("rpc_servers") or ())
        one_gpu = gpu_id is not None and int(gpu_id) >= 0 and not rpc_servers
        prefix_cache = config.get("prefix_cache", EngineConfig.prefix_cache)
        if isinstance(prefix_cache, bool):  # the earlier true/false form
            prefix_cache = engine.CACHE_SHARED if prefix_cache else engine.CACHE_OFF
        flash_attn = config.get("flash_attn", EngineConfig.flash_attn)
        if isinstance(flash_attn, bool):  # YAML 1.1 reads a bare on/off as true/false
            flash_attn = "on" if flash_attn else "off"
        self.engine = LlamaEngine(
            EngineConfig(
                model_path=model_path,
                n_ctx=int(config.get("n_ctx", EngineConfig.n_ctx)),
                n_threads=int(config.get("n_threads", EngineConfig.n_threads)),
                n_gpu_layers=int(config.get("n_gpu_layers", EngineConfig.n_gpu_layers)),
                max_sequences=max(batch_size, int(config.get("max_sequences", 1))),
                n_batch=int(config.get("n_batch", EngineConfig.n_batch)),
                # TorchServe hands each worker a GPU id: worker N runs whole on GPU N, unless the
                # config splits the model over several devices.
                main_gpu=int(config.get("main_gpu", gpu_id if gpu_id is not None else 0) or 0),
                rpc_servers=rpc_servers,
                split_mode=str(config.get("split_mode", "none" if one_gpu else "layer")),
                tensor_split=tuple(float(x) for x in config.get("tensor_split") or ()),
                kv_unified=bool(config.get("kv_unified", EngineConfig.kv_unified)),
                prefix_cache=str(prefix_cache),
                flash_attn=str(flash_attn),
            )
        )
        template = config.get("chat_template") or self.engine.metadata("tokenizer.chat_template")
        if not template:
            raise ValueError(
                "The GGUF file has no chat template; set handler.chat_template in model-config.yaml"
            )
        self.prompt = ChatPrompt(
            template,
            bos_token=self.engine.bos_token,
            eos_token=self.engine.eos_token,
            tokenize=self.engine.tokenize,
        )
        self.limits = contract.Limits(
            n_ctx=self.engine.n_ctx_seq,
            n_vocab=self.engine.n_vocab,
            max_sequences=self.engine.config.max_sequences,
            max_text_chars=self.engine.n_ctx_seq * self.engine.max_token_chars,
            model=self.model_name,
        )
        seed = config.get("seed")
        # Requests without a seed draw one from this generator: replies vary, runs are repeatable.
        self._seeds = random.Random(None if seed in (None, -1) else int(seed))
        self.info = self.engine.describe()
        self._metrics = _HandlerMetrics(context, self.model_name)
        _quiet_per_call_output(context, idle=self._idle)
        # One line per worker that the console reads to show backend, devices and layers; each
        # step profile repeats it, so a long-busy worker's tail of the log still names its engine.
        logger.info("%s %s", WORKER_INFO_MARK, json.dumps(self._worker()))
        self.initialized = True

    # -- serving ---------------------------------------------------------------------------

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self._calls.begin()
        try:
            if self.continuous:
                return self._handle_step(data, context)
            return self._handle_batch(data, context)
        finally:
            assert self.engine is not None
            if self._calls.end(self._idle(), PROFILE_EVERY_S):
                profile: dict[str, Any] = {**self._calls.as_dict(), **self.engine.times.as_dict()}
                profile["worker"] = self._worker()
                logger.info("%s %s", PROFILE_MARK, json.dumps(profile))

    def _worker(self) -> dict[str, Any]:
        """What this worker runs on, as its log lines give it to the console."""
        return {**self.info, "pid": os.getpid()}

    def _idle(self) -> bool:
        """Whether nothing is being decoded or waiting for a slot."""
        assert self.engine is not None
        return not self.engine.active and not self.engine.queue

    def _admit(self, idx: int, row: dict[str, Any], context: Any, results: list[Any]) -> Job | None:
        """Start a request, or answer it at once (refused, or a route without decoding)."""
        try:
            started = self._start(idx, row, context)
        except RequestError as err:
            self._reply_error(context, idx, err, results)
            return None
        except Exception as exc:  # a bug must cost this request only
            logger.exception("Request %s failed while starting", context.get_request_id(idx))
            failure = RequestError(f"The server could not start this request: {exc}", status=500)
            self._reply_error(context, idx, failure, results)
            return None
        if isinstance(started, bytes):
            results[idx] = started
            context.set_response_content_type(idx, JSON_TYPE)
            return None
        return started

    def _handle_batch(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Dynamic batching: decode the whole batch to the end, streaming as tokens come."""
        assert self.engine is not None
        results: list[Any] = [b""] * len(data)
        jobs = [
            job for idx, row in enumerate(data) if (job := self._admit(idx, row, context, results))
        ]
        try:
            self._run(jobs, context)
        finally:
            for job in jobs:
                self._cancel(job)
            context.stopping_criteria = None

        for job in jobs:
            self._record(job)
            if job.closed:
                # Already completed on the wire: leave it out of TorchServe's final message.
                context.request_ids.pop(job.idx, None)
            else:
                results[job.idx] = self._final(job, context)
        return results

    def _handle_step(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Continuous batching: admit new requests, decode one step, answer every request."""
        assert self.engine is not None
        ids = [context.request_ids[idx] for idx in range(len(data))]
        for request_id in set(self.running) - set(ids):
            # TorchServe drops a request whose client disconnected: stop spending compute on it.
            gone = self.running.pop(request_id)
            logger.info("Request %s left (client gone); cancelling it", request_id)
            self._cancel(gone)
            self._record(gone)
        results: list[Any] = [b""] * len(data)
        stream_next: dict[int, bool | None] = {}
        for idx, row in enumerate(data):
            if ids[idx] in self.running:
                continue
            stream_next[idx] = None  # answered now, in one piece
            admitted = self._admit(idx, row, context, results)
            if admitted is not None:
                self.running[ids[idx]] = admitted
        self._calls.mark("admit")
        if self.engine.active:
            self.engine.step()  # one step per call: each token reaches its client as it is decoded
        self._calls.mark("step")
        for idx, request_id in enumerate(ids):
            job = self.running.get(request_id)
            if job is None:
                continue
            job.idx = idx
            self._set_content_type(context, job)
            if job.request.stream and not job.failed:
                written = self._try(job, context, self._stream_bytes)  # may replace job.body
                job.body += written
            if not job.finished:
                results[idx], job.body = job.body, b""
                stream_next[idx] = True  # keeps the HTTP response open
                job.started = True
                continue
            del self.running[request_id]
            self._record(job)
            results[idx] = self._final(job, context)
            stream_next[idx] = False if job.started else None
        # TorchServe reads ts_stream_next per request from these (None: a plain, whole response).
        context.stopping_criteria = {
            idx: (lambda _, more=more: None if more is None else not more)
            for idx, more in stream_next.items()
        }
        self._calls.mark("respond")
        return results

    def _try(self, job: Job, context: Any, write: Callable[[Job], bytes]) -> bytes:
        """What ``write`` makes of a job; if it raises, the job ends with an error of its own."""
        try:
            return write(job)
        except Exception as exc:  # a bug must cost this request only
            logger.exception("Request %s failed while answering", context.request_ids.get(job.idx))
            self._cancel(job)
            job.failed = job.ended = True
            err = RequestError(f"The server failed while answering: {exc}", status=500)
            if job.started and job.request.stream:  # the stream is open: an error event ends it
                job.body += b"" if job.plain_text else api.sse(err.body()) + api.sse("[DONE]")
                return b""
            if not job.started:  # else the status went out with the headers
                context.set_response_status(500, "", job.idx)
                context.set_response_content_type(job.idx, JSON_TYPE)
            job.body = json.dumps(err.body()).encode("utf-8")
            return b""

    def _final(self, job: Job, context: Any) -> bytes:
        """The job's last bytes: the end of its stream or its whole answer (or its error)."""
        body = self._try(job, context, lambda job: self._final_body(job, context))
        return job.body if job.failed else body

    def _cancel(self, job: Job) -> None:
        assert self.engine is not None
        for answer in job.answers:
            if not answer.gen.finished:
                self.engine.cancel(answer.gen)

    def _record(self, job: Job) -> None:
        for answer in job.answers:
            self._metrics.record(answer.gen)

    def _set_content_type(self, context: Any, job: Job) -> None:
        if job.request.stream:
            context.set_response_content_type(job.idx, TEXT_TYPE if job.plain_text else SSE_TYPE)
            context.set_response_header(job.idx, "Cache-Control", "no-cache")
        elif job.plain_text:
            context.set_response_content_type(job.idx, TEXT_TYPE)
        else:
            context.set_response_content_type(job.idx, JSON_TYPE)

    # -- starting a request ----------------------------------------------------------------

    def _start(self, idx: int, row: dict[str, Any], context: Any) -> Job | bytes:
        """Parse and start one request; bytes: it is answered at once."""
        assert self.engine is not None
        endpoint = api.route(context.get_request_header(idx, "url_path"))
        if endpoint == api.MODELS:
            meta = {**self.info, "slots": self.engine.slots()}
            return json.dumps(api.model_list(self.model_name, "tschat", meta)).encode()
        body = row.get("body")
        if body is None:
            body = row.get("data")
        request = contract.parse(endpoint, contract.decode_body(body), self.limits)
        if endpoint in (TOKENIZE, DETOKENIZE):
            return json.dumps(self._tokens_answer(request), ensure_ascii=False).encode()

        grammar, grammar_param = self._grammar(request)
        prompts = self._prompt_tokens(request)
        seed = request.sampling.seed
        if seed is None:
            seed = self._seeds.getrandbits(32)
        scope = request.user if self.engine.config.prefix_cache == engine.CACHE_PER_USER else None
        answers: list[Answer] = []
        try:
            for tokens, echo in prompts:
                first: Generation | None = None
                for _ in range(request.n):
                    # Each answer of n samples with its own seed: the same request repeats.
                    sampling = dataclasses.replace(request.sampling, seed=seed + len(answers))
                    gen = self.engine.start(
                        tokens,
                        sampling,
                        grammar=grammar,
                        logprobs=request.logprobs,
                        scope=scope,
                        fork_of=first,
                    )
                    first = first or gen
                    answers.append(Answer(len(answers), gen, self._reader(request), echo))
        except (ContextOverflow, GrammarError) as exc:
            for answer in answers:
                self.engine.cancel(answer.gen)
            if isinstance(exc, GrammarError):
                raise RequestError(str(exc), grammar_param) from None
            raise RequestError(
                str(exc),
                "messages" if endpoint == CHAT else "prompt",
                code="context_length_exceeded",
            ) from None
        except BaseException:
            for answer in answers:
                self.engine.cancel(answer.gen)
            raise
        job = Job(
            idx,
            request,
            answers,
            sum(len(tokens) for tokens, _ in prompts),
            api.new_id(endpoint),
            int(time.time()),
        )
        self._set_content_type(context, job)
        if request.stream:
            job.body = self._opening_bytes(job)
        return job

    def _grammar(self, request: Request) -> tuple[str | None, str]:
        """The grammar the answer must follow, and the field that asked for it."""
        choice = request.tool_choice
        if choice.mode == "required":
            return tool_call_grammar(request.tools, choice, request.parallel_tool_calls), "tools"
        param = "grammar" if request.output.kind == "grammar" else "response_format"
        return output_grammar(request.output, param), param

    def _reader(self, request: Request) -> ToolCallReader | None:
        choice = request.tool_choice
        if choice.mode == "none":
            return None
        return ToolCallReader(choice.names, request.parallel_tool_calls)

    def _prompt_tokens(self, request: Request) -> list[tuple[list[int], str]]:
        """Each prompt's tokens and the text echoed before its answers."""
        assert self.engine is not None
        if request.endpoint == CHAT:
            return [(self.prompt.tokens(request), "")]
        out = []
        for prompt in request.prompts:
            if isinstance(prompt, str):
                # A raw prompt is the client's whole input, markup included (as llama-server
                # reads it).
                tokens = self.engine.tokenize(prompt, add_special=True, parse_special=True)
                text = prompt
            else:
                tokens = list(prompt)
                text = self.engine.detokenize(tokens)
            echo = text if request.echo or request.endpoint == LEGACY else ""
            out.append((tokens, echo))
        return out

    def _tokens_answer(self, request: Request) -> dict[str, Any]:
        assert self.engine is not None
        if request.endpoint == DETOKENIZE:
            return {"content": self.engine.detokenize(request.tokens)}
        if request.content is not None:
            tokens = self.engine.tokenize(
                request.content, request.add_special, request.parse_special
            )
        else:
            tokens = self.prompt.tokens(request)
        answer: dict[str, Any] = {
            "tokens": tokens,
            "count": len(tokens),
            "n_ctx": self.engine.n_ctx_seq,
        }
        if request.with_pieces:
            answer["tokens"] = [
                {"id": t, "piece": self.engine.piece(t, special=True).decode("utf-8", "replace")}
                for t in tokens
            ]
        return answer

    # -- decoding --------------------------------------------------------------------------

    def _run(self, jobs: list[Job], context: Any) -> None:
        """Decode all jobs together, sending each streamed token as soon as it exists."""
        assert self.engine is not None
        streams = [j for j in jobs if j.request.stream]
        if streams:
            # Send the headers and the role chunk now: clients see the stream open before prefill.
            self._send(context, streams, closing=set())
        gens = [a.gen for j in jobs for a in j.answers]
        for _ in self.engine.generate(gens):
            for job in streams:
                if not job.closed and not job.failed:
                    written = self._try(job, context, self._stream_bytes)  # may replace job.body
                    job.body += written
            open_streams = [j for j in streams if not j.closed]
            running = [j for j in open_streams if not j.finished]
            if not running:
                continue  # what is left goes out with the final message
            closing = {j.idx for j in open_streams if j.finished}
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
            j.started = True
            j.closed = j.idx in closing

    # -- writing answers -------------------------------------------------------------------

    def _take(self, answer: Answer) -> tuple[str, list[ParsedCall], list[api.Entry]]:
        """What an answer produced since the last look: text, completed tool calls, logprobs."""
        assert self.engine is not None
        gen = answer.gen
        text = gen.take_delta()
        entries: list[api.Entry] = [
            (e.piece, e.logprob, [(piece, lp) for _, piece, lp in e.top])
            for e in gen.take_logprobs()
        ]
        calls: list[ParsedCall] = []
        if answer.reader is not None:
            text, calls = answer.reader.feed(text)
            if answer.reader.done and not gen.finished:
                self.engine.cancel(gen)  # one call was asked for, and it is complete
            if gen.finished:
                text += answer.reader.finish()
        answer.content += text
        answer.calls += calls
        answer.entries += entries
        return text, calls, entries

    def _finish_reason(self, answer: Answer) -> str:
        if answer.calls:
            return "tool_calls"
        reason = answer.gen.finish_reason
        return engine.STOP if reason in (None, engine.CANCELLED) else reason

    def _opening_bytes(self, job: Job) -> bytes:
        if job.plain_text:
            return "".join(a.echo for a in job.answers[:1]).encode("utf-8")
        out = b""
        for answer in job.answers:
            if job.wire_endpoint == CHAT:
                choice = api.chat_delta(answer.index, text="", first=True)
            elif not answer.echo:
                continue
            else:
                choice = api.text_delta(answer.index, answer.echo)
                answer.offset = len(answer.echo)
            out += api.sse(self._chunk(job, [choice]))
        return out

    def _stream_bytes(self, job: Job) -> bytes:
        """The chunks of what each answer produced since the last call."""
        out = b""
        for answer in job.answers:
            if answer.done:
                continue
            text, calls, entries = self._take(answer)
            finished = answer.gen.finished
            if answer.gen.error is not None and finished:
                answer.done = True
                if job.plain_text:
                    continue
                err = RequestError(f"The answer broke off: {answer.gen.error}", status=500)
                out += api.sse(err.body())
                continue
            if job.plain_text:
                out += text.encode("utf-8")
                answer.done = finished
                continue
            if not (text or calls or entries or finished):
                continue
            reason = self._finish_reason(answer) if finished else None
            if job.wire_endpoint == CHAT:
                choice = api.chat_delta(
                    answer.index,
                    text=text if text or not calls else None,
                    tool_calls=api.tool_calls_json(
                        calls, len(answer.calls) - len(calls), stream=True
                    ),
                    logprobs=api.chat_logprobs(entries)
                    if job.request.logprobs is not None
                    else None,
                    finish_reason=reason,
                )
            else:
                logprobs = None
                if job.request.logprobs is not None:
                    logprobs = api.completion_logprobs(entries, answer.offset)
                answer.offset += len(text)
                choice = api.text_delta(answer.index, text, logprobs, reason)
            out += api.sse(self._chunk(job, [choice]))
            answer.done = finished
        if job.finished and all(a.done for a in job.answers) and not job.ended:
            job.ended = True
            if job.plain_text:
                return out
            if job.request.include_usage:
                final = self._chunk(job, [])
                final["usage"] = self._usage(job)
                final["timings"] = _timings(job.answers[0].gen)
                out += api.sse(final)
            out += api.sse("[DONE]")
        return out

    def _chunk(self, job: Job, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return api.chunk(
            job.wire_endpoint,
            job.response_id,
            job.created,
            self.model_name,
            choices,
            obfuscate=job.request.obfuscate,
        )

    def _usage(self, job: Job) -> dict[str, Any]:
        gens = [a.gen for a in job.answers]
        # The n answers of a prompt share it: it counts once, its cache once per prompt.
        per_prompt = job.request.n
        cached = sum(g.cached_tokens for g in gens[::per_prompt])
        return api.usage(job.prompt_tokens, sum(g.completion_tokens for g in gens), cached)

    def _final_body(self, job: Job, context: Any) -> bytes:
        """What goes out with TorchServe's final message: the stream's end or the whole answer."""
        if job.failed:
            return job.body
        if job.request.stream:
            return job.body + self._stream_bytes(job) if not job.closed else b""
        for answer in job.answers:
            self._take(answer)
        broken = [a.gen.error for a in job.answers if a.gen.error is not None]
        if broken:
            err = RequestError(f"The answer broke off: {broken[0]}", status=500)
            context.set_response_status(500, "", job.idx)
            context.set_response_content_type(job.idx, JSON_TYPE)
            return json.dumps(err.body()).encode("utf-8")
        if job.plain_text:
            # The original example answered with the prompt and its continuation as plain text.
            return (job.answers[0].echo + job.answers[0].content).encode("utf-8")
        choices = []
        for answer in job.answers:
            if job.wire_endpoint == CHAT:
                logprobs = (
                    api.chat_logprobs(answer.entries) if job.request.logprobs is not None else None
                )
                calls = api.tool_calls_json(answer.calls)
                content = answer.content if answer.content or not calls else None
                choices.append(
                    api.chat_choice(
                        answer.index, content, self._finish_reason(answer), calls, logprobs
                    )
                )
            else:
                logprobs = None
                if job.request.logprobs is not None:
                    logprobs = api.completion_logprobs(answer.entries, len(answer.echo))
                choices.append(
                    api.text_delta(
                        answer.index,
                        answer.echo + answer.content,
                        logprobs,
                        self._finish_reason(answer),
                    )
                )
        body = api.completion(
            job.wire_endpoint,
            job.response_id,
            job.created,
            self.model_name,
            choices,
            self._usage(job),
            _timings(job.answers[0].gen),
        )
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _reply_error(self, context: Any, idx: int, err: RequestError, results: list[Any]) -> None:
        logger.info("Refused request %s: %s", context.get_request_id(idx), err.message)
        context.set_response_status(err.status, "", idx)
        context.set_response_content_type(idx, JSON_TYPE)
        results[idx] = json.dumps(err.body()).encode("utf-8")
        self._metrics.refused()


def _quiet_per_call_output(context: Any, idle: Callable[[], bool]) -> None:
    """Keep TorchServe's worker from writing two lines to the frontend on every call.

    The worker's output goes to the frontend, which reads and parses every line. In continuous
    batching there is a call per decode step, and on each the worker logs that it received one
    and then writes the call's ``PredictionTime`` metric: about 0.5 ms a token of Python and
    Java CPU, some of it taken from llama.cpp's threads. The first line is TorchServe's reader's,
    which ``worker_wire`` replaces with one that does not log; the metric is written as the mean
    of the calls in each second, and when the worker falls idle (so after every call in dynamic
    batching, where a call is a whole batch).
    """
    worker_wire.install()
    metrics = context.metrics
    metrics.add_time = _MeanPredictionTime(metrics.add_time, idle, PREDICTION_TIME_EVERY_S)


class _MeanPredictionTime:
    """Stands in for TorchServe's ``metrics.add_time``: ``PredictionTime`` as a mean per
    ``every_s`` (and when ``idle()``), every other timed metric passed on as it comes."""

    def __init__(self, add_time: Callable[..., None], idle: Callable[[], bool], every_s: float):
        self.add_time = add_time
        self.idle = idle
        self.every_s = every_s
        self.total_ms = 0.0
        self.calls = 0
        self.since = time.monotonic()

    def __call__(self, name: str, value: float, *args: Any, **kwargs: Any) -> None:
        if name != PREDICTION_METRIC:
            self.add_time(name, value, *args, **kwargs)
            return
        self.total_ms += value
        self.calls += 1
        now = time.monotonic()
        if now - self.since >= self.every_s or self.idle():
            self.add_time(name, round(self.total_ms / self.calls, 2), *args, **kwargs)
            self.total_ms, self.calls, self.since = 0.0, 0, now


class _CallTimes:
    """Where the worker's time goes around the engine: between handler calls (TorchServe and
    its frontend), admitting requests, decoding, writing the answers; summed, in seconds."""

    PARTS = ("between_calls", "admit", "step", "respond")

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self._last = time.perf_counter()
        self._logged = self._last
        self._idle = True

    def begin(self) -> None:
        now = time.perf_counter()
        if not self._idle:  # waiting for requests is not TorchServe's cost
            self.seconds["between_calls"] += now - self._last
        self._last = now

    def mark(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[part] += now - self._last
        self._last = now

    def end(self, idle: bool, every_s: float) -> bool:
        """Close a call; whether it is time to log (the worker fell idle, or every_s passed)."""
        self._last = now = time.perf_counter()
        self.calls += 1
        went_idle = idle and not self._idle
        self._idle = idle
        if went_idle or now - self._logged >= every_s:
            self._logged = now
            return True
        return False

    def as_dict(self) -> dict[str, float]:
        return {"calls": self.calls, **{k: round(v, 6) for k, v in self.seconds.items()}}


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
