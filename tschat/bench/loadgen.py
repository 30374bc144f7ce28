"""Concurrent streaming clients against an OpenAI-compatible chat endpoint on this machine.

A :class:`Target` is a chat-completions URL and its key: TorchServe's
``/predictions/MODEL/1.0/v1/chat/completions`` with its inference key (refreshed when it
expires), or llama-server's ``/v1/chat/completions`` with its API key. What the clients ask
comes from a scenario (:mod:`tschat.bench.scenarios`): distinct prompts, multi-turn chats that
re-send their history each turn, or one shared prompt.

Each client is a thread with its own HTTP session that works through its share of the
scenario's conversations one request after another (a closed loop), or fewer if the time
budget runs out. For every request it records when the first content token arrived, the gaps
between later tokens, the token counts (from the final chunk's ``usage``), which conversation
and turn it was, and any failure. Clients may start staggered, client ``i`` starting
``i * stagger_s`` after the first, to model users arriving one by one.

The figures come from the pure functions below (:func:`percentile`, :func:`summarize`),
which the unit tests pin down. Only loopback addresses are accepted: this is a tool for
measuring a server on this machine, not for loading someone else's.

The console's Experiments page and ``benchmarks/`` both drive loads through :func:`run_load`
and :func:`run_target`; ``python -m benchmarks.loadgen`` is its command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tschat.api.inference import ChatMessage, ChatStream, InferenceClient
from tschat.api.keys import KeyStore
from tschat.bench import scenarios
from tschat.bench.scenarios import DEFAULT_INSTRUCTION, SHARED_PREFIX, Conversation
from tschat.errors import TsChatError

__all__ = ["DEFAULT_INSTRUCTION"]  # re-exported: the Experiments page's default prompt
# Filler that makes a prompt longer without changing what is asked.
_FILLER = (
    "The harbour town sits between grey cliffs and a wide bay where fishing boats come and go "
    "with the tide, and the people there know every rock and current by name."
).split()


@dataclass(frozen=True)
class Target:
    """An OpenAI-compatible chat-completions endpoint on this machine, and the key it takes."""

    base_url: str
    keys: KeyStore | None
    model: str = ""  # TorchServe's model name (the path is built from it), or a label
    path: str | None = None  # another server's chat-completions path, e.g. "/v1/chat/completions"

    @classmethod
    def torchserve(cls, base_url: str, keys: KeyStore, model: str) -> Target:
        """A model on TorchServe, with its inference key (refreshed when it expires)."""
        return cls(base_url, keys, model)

    @classmethod
    def openai(cls, base_url: str, api_key: str | None, label: str = "") -> Target:
        """A server with the OpenAI layout (llama-server), with a fixed API key if any."""
        keys = KeyStore.explicit(inference=api_key) if api_key else None
        return cls(base_url, keys, label, "/v1/chat/completions")


@dataclass(frozen=True)
class LoadSpec:
    """One load: how many clients, how many requests in all, and what they ask.

    ``scenario`` picks the requests (:mod:`tschat.bench.scenarios`); ``max_tokens`` is the answer
    cap of shared-prefix requests and the largest cap the other scenarios draw; ``turns`` is
    the length of a multi-turn chat; ``first`` is the index of the first conversation drawn, so
    that successive loads can ask different questions.
    """

    clients: int
    requests: int
    max_tokens: int = 64
    prompt: str = DEFAULT_INSTRUCTION
    stagger_s: float = 0.0
    duration_s: float = 300.0
    timeout_s: float = 120.0
    temperature: float = 0.0
    seed: int = 1
    scenario: str = SHARED_PREFIX
    turns: int = scenarios.DEFAULT_TURNS
    first: int = 0
    repeat_penalty: float | None = None  # None: the server's default
    ignore_eos: bool = False  # every answer runs to its cap (llama.cpp's extension field)

    def __post_init__(self) -> None:
        if self.clients < 1 or self.requests < 1:
            raise ValueError("clients and requests must be at least 1")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.stagger_s < 0 or self.duration_s <= 0 or self.timeout_s <= 0:
            raise ValueError("stagger_s must be >= 0, duration_s and timeout_s > 0")
        if self.scenario not in scenarios.SCENARIOS:
            raise ValueError(
                f"unknown scenario {self.scenario!r}: one of {', '.join(scenarios.SCENARIOS)}"
            )
        if self.turns < 1 or self.first < 0:
            raise ValueError("turns must be at least 1 and first at least 0")

    def conversations(self) -> list[Conversation]:
        """What the clients send, in order (multi-turn rounds up to whole chats)."""
        return scenarios.build(
            self.scenario,
            self.requests,
            first=self.first,
            max_tokens=self.max_tokens,
            turns=self.turns,
            prompt=self.prompt or DEFAULT_INSTRUCTION,
        )

    def sampling(self) -> dict[str, Any]:
        """The sampling fields every request carries (None: left to the server)."""
        return {
            "temperature": self.temperature,
            "seed": self.seed,
            "repeat_penalty": self.repeat_penalty,
            "ignore_eos": True if self.ignore_eos else None,
            "stream_options": {"include_usage": True},
        }


@dataclass(frozen=True)
class RequestRecord:
    """What one request saw; times are seconds on the run's clock (0 = the run's start)."""

    client: int
    started: float
    finished: float
    token_times: tuple[float, ...] = ()  # arrival of each piece of content
    tokens: int = 0
    error: str | None = None
    conversation: int = 0  # index within the load's conversations
    turn: int = 1  # 1 for the first request of a conversation
    prompt_tokens: int | None = None  # as the server counted them (usage), when it said

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        """Time from sending the request to its first content token."""
        return self.token_times[0] - self.started if self.token_times else None

    @property
    def gaps_s(self) -> list[float]:
        """Time between successive content tokens."""
        return inter_token_gaps(self.token_times)

    @property
    def stream_tokens_per_s(self) -> float | None:
        """This stream's decode speed after its first token."""
        if len(self.token_times) < 2 or self.tokens < 2:
            return None
        return tokens_per_second(self.tokens - 1, self.token_times[-1] - self.token_times[0])


@dataclass(frozen=True)
class Summary:
    """The figures of one load run."""

    requests: int
    failures: int
    tokens: int
    wall_s: float
    tokens_per_s: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    stream_tps_p50: float | None
    errors: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class LoadResult:
    """Every request's record and the figures drawn from them."""

    spec: LoadSpec
    records: tuple[RequestRecord, ...]
    summary: Summary


# ---------------------------------------------------------------- pure aggregation


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolating linearly between ranks; None when empty.

    >>> percentile([1, 2, 3, 4], 50)
    2.5
    >>> percentile([10.0], 95), percentile([], 50)
    (10.0, None)
    >>> percentile([0, 10], 95)
    9.5
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be between 0 and 100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def tokens_per_second(tokens: int, seconds: float) -> float | None:
    """Tokens over seconds; None when no time passed.

    >>> tokens_per_second(120, 2.0), tokens_per_second(5, 0.0)
    (60.0, None)
    """
    return tokens / seconds if seconds > 0 else None


def inter_token_gaps(times: Sequence[float]) -> list[float]:
    """Differences between successive arrival times.

    >>> inter_token_gaps([1.0, 1.5, 1.75])
    [0.5, 0.25]
    >>> inter_token_gaps([3.0])
    []
    """
    return [later - earlier for earlier, later in zip(times[:-1], times[1:], strict=True)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def summarize(records: Sequence[RequestRecord]) -> Summary:
    """Aggregate figures of a run.

    Throughput is every token received (failed requests' partial answers too) over the time
    from the first request's start to the last one's end. Latency percentiles come from the
    requests that succeeded.

    >>> recs = [RequestRecord(0, 0.0, 1.0, (0.2, 0.4, 0.6), 3),
    ...         RequestRecord(1, 0.0, 2.0, (), 0, "ServerError: gone")]
    >>> s = summarize(recs)
    >>> (s.requests, s.failures, s.tokens, s.wall_s, s.tokens_per_s)
    (2, 1, 3, 2.0, 1.5)
    >>> round(s.ttft_p50_ms), round(s.itl_p50_ms), s.errors
    (200, 200, ('ServerError: gone',))
    """
    if not records:
        return Summary(0, 0, 0, 0.0, None, None, None, None, None, None)
    good = [r for r in records if r.ok]
    start = min(r.started for r in records)
    end = max(r.finished for r in records)
    wall = end - start
    tokens = sum(r.tokens for r in records)
    ttfts = [t for r in good if (t := r.ttft_s) is not None]
    gaps = [g for r in good for g in r.gaps_s]
    speeds = [s for r in good if (s := r.stream_tokens_per_s) is not None]
    errors = tuple(dict.fromkeys(r.error for r in records if r.error is not None))
    return Summary(
        requests=len(records),
        failures=len(records) - len(good),
        tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens_per_second(tokens, wall),
        ttft_p50_ms=_ms(percentile(ttfts, 50)),
        ttft_p95_ms=_ms(percentile(ttfts, 95)),
        itl_p50_ms=_ms(percentile(gaps, 50)),
        itl_p95_ms=_ms(percentile(gaps, 95)),
        stream_tps_p50=percentile(speeds, 50),
        errors=errors[:5],
    )


def ttft_by_turn(records: Sequence[RequestRecord], q: float = 50) -> dict[int, float | None]:
    """The q-th percentile of time to first token (ms) of successful requests, per turn.

    >>> recs = [RequestRecord(0, 0.0, 1.0, (0.1,), 1), RequestRecord(1, 0.0, 1.0, (0.2,), 1),
    ...         RequestRecord(0, 1.0, 2.0, (1.3,), 1, turn=2),
    ...         RequestRecord(1, 1.0, 2.0, (), 0, "X: failed", turn=2)]
    >>> {turn: round(ms) for turn, ms in ttft_by_turn(recs).items()}
    {1: 150, 2: 300}
    """
    turns: dict[int, list[float]] = {}
    for r in records:
        if r.ok and (ttft := r.ttft_s) is not None:
            turns.setdefault(r.turn, []).append(ttft)
    return {turn: _ms(percentile(turns[turn], q)) for turn in sorted(turns)}


def client_shares(requests: int, clients: int) -> list[range]:
    """Which requests each client sends, in order: as even as possible, the first clients taking
    the remainder.

    Fixed shares keep arrivals as specified: a fast client does not take a slow one's turn.

    >>> [list(r) for r in client_shares(10, 4)]
    [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    >>> [len(r) for r in client_shares(2, 3)]
    [1, 1, 0]
    """
    share, extra = divmod(requests, clients)
    shares, start = [], 0
    for i in range(clients):
        end = start + share + (1 if i < extra else 0)
        shares.append(range(start, end))
        start = end
    return shares


def make_prompt(words: int = 0, instruction: str = DEFAULT_INSTRUCTION) -> str:
    """The instruction, preceded by neutral context so the prompt has about ``words`` words.

    >>> make_prompt(0) == DEFAULT_INSTRUCTION
    True
    >>> len(make_prompt(100).split())
    100
    >>> make_prompt(100).endswith(DEFAULT_INSTRUCTION)
    True
    """
    extra = max(words - len(instruction.split()), 0)
    if not extra:
        return instruction
    filler = [_FILLER[i % len(_FILLER)] for i in range(extra)]
    return " ".join(filler) + "\n\n" + instruction


def check_loopback(url: str) -> str:
    """Return url if it points at this machine's loopback address; raise ValueError otherwise.

    >>> check_loopback("http://127.0.0.1:8080")
    'http://127.0.0.1:8080'
    >>> check_loopback("http://example.com:8080")
    Traceback (most recent call last):
    ...
    ValueError: the load generator only targets a loopback address such as 127.0.0.1, not 'example.com'
    """  # noqa: E501
    host = urlsplit(url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the load generator only targets a loopback address such as 127.0.0.1, not {host!r}"
        )
    return url


# ---------------------------------------------------------------- running a load


def run_load(
    base_url: str,
    keys: KeyStore,
    model: str,
    spec: LoadSpec,
    on_record: Callable[[RequestRecord], None] | None = None,
    cancel: threading.Event | None = None,
) -> LoadResult:
    """Run ``spec`` against ``{base_url}/predictions/{model}/1.0/v1/chat/completions``."""
    return run_target(Target.torchserve(base_url, keys, model), spec, on_record, cancel)


def run_target(
    target: Target,
    spec: LoadSpec,
    on_record: Callable[[RequestRecord], None] | None = None,
    cancel: threading.Event | None = None,
) -> LoadResult:
    """Run ``spec`` against ``target``.

    Blocks until every request has finished or failed, or the time budget (``duration_s``
    for starting requests, plus ``timeout_s`` for the last ones to end) is spent.
    ``on_record`` is called from the client threads as each request ends (for progress).
    Setting ``cancel`` stops the clients from sending more and closes the streams under way
    (the server stops generating them); they are recorded as failed.
    A conversation whose request fails ends there: its history has no answer to go on with.
    """
    check_loopback(target.base_url)
    conversations = spec.conversations()
    shares = client_shares(len(conversations), spec.clients)
    lock = threading.Lock()
    records: list[RequestRecord] = []
    streams = _OpenStreams()
    t0 = time.perf_counter()
    deadline = t0 + spec.stagger_s * (spec.clients - 1) + spec.duration_s

    def stopped() -> bool:
        return time.perf_counter() >= deadline or (cancel is not None and cancel.is_set())

    def client_loop(index: int) -> None:
        client = InferenceClient(target.base_url, target.keys, timeout=spec.timeout_s)
        try:
            delay = t0 + index * spec.stagger_s - time.perf_counter()
            if delay > 0 and cancel is not None:
                cancel.wait(delay)
            elif delay > 0:
                time.sleep(delay)
            for number in shares[index]:
                history: list[ChatMessage] = []
                for turn_number, turn in enumerate(conversations[number].turns, 1):
                    if stopped():
                        return
                    history.append({"role": "user", "content": turn.user})
                    record, answer = _one_request(
                        client, target, history, turn.max_tokens, spec, t0, streams,
                        RequestRecord(index, 0.0, 0.0, conversation=number, turn=turn_number),
                    )  # fmt: skip
                    with lock:
                        records.append(record)
                    if on_record is not None:
                        on_record(record)
                    if not record.ok:
                        break
                    history.append({"role": "assistant", "content": answer})
        finally:
            client.session.close()

    threads = [
        threading.Thread(target=client_loop, args=(i,), name=f"loadgen-{i}", daemon=True)
        for i in range(spec.clients)
    ]
    for thread in threads:
        thread.start()
    give_up = deadline + spec.timeout_s + 5.0
    # Short joins, so that Ctrl-C reaches this thread while clients are still streaming.
    while any(t.is_alive() for t in threads) and time.perf_counter() < give_up:
        if cancel is not None and cancel.is_set():
            streams.close_all()
        for thread in threads:
            thread.join(0.2)
    with lock:
        done = tuple(sorted(records, key=lambda r: r.started))
    return LoadResult(spec, done, summarize(done))


class _OpenStreams:
    """The streams the clients are reading, so that a cancel can close them all."""

    def __init__(self) -> None:
        self._streams: set[ChatStream] = set()
        self._lock = threading.Lock()
        self.closed = False

    def add(self, stream: ChatStream) -> None:
        with self._lock:
            self._streams.add(stream)
            closed = self.closed
        if closed:  # opened while the cancel closed the others
            stream.close()

    def discard(self, stream: ChatStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def close_all(self) -> None:
        with self._lock:
            self.closed = True
            streams = list(self._streams)
        for stream in streams:
            with contextlib.suppress(Exception):  # closing from another thread may race
                stream.close()


def _one_request(
    client: InferenceClient,
    target: Target,
    messages: list[ChatMessage],
    max_tokens: int,
    spec: LoadSpec,
    t0: float,
    streams: _OpenStreams,
    which: RequestRecord,
) -> tuple[RequestRecord, str]:
    """Send one streamed request; its record (client, conversation, turn from ``which``)."""
    started = time.perf_counter() - t0
    times: list[float] = []
    tokens = 0
    prompt_tokens: int | None = None
    error: str | None = None
    text = ""
    try:
        stream = client.chat_stream(
            target.model, messages, path=target.path, max_tokens=max_tokens, **spec.sampling()
        )
        streams.add(stream)
        try:
            for _piece in stream:
                times.append(time.perf_counter() - t0)
        finally:
            streams.discard(stream)
        text = stream.text
        tokens = stream.usage.completion_tokens if stream.usage is not None else len(times)
        prompt_tokens = stream.usage.prompt_tokens if stream.usage is not None else None
    except TsChatError as exc:
        error = f"{type(exc).__name__}: {exc}"
        tokens = len(times)
    except Exception as exc:  # noqa: BLE001 - a benchmark counts every failure, whatever it is
        error = f"{type(exc).__name__}: {exc}"
        tokens = len(times)
    record = dataclasses.replace(
        which,
        started=started,
        finished=time.perf_counter() - t0,
        token_times=tuple(times),
        tokens=tokens,
        error=error,
        prompt_tokens=prompt_tokens,
    )
    return record, text


# ---------------------------------------------------------------- text


def format_summary(summary: Summary) -> str:
    """One line of figures.

    >>> format_summary(Summary(4, 0, 256, 2.0, 128.0, 40.0, 55.0, 9.0, 12.5, 100.0))
    '4 requests, 0 failed, 256 tokens in 2.00 s: 128.0 tok/s; TTFT p50 40 ms p95 55 ms; ITL p50 9.0 ms p95 12.5 ms'
    """  # noqa: E501

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return (
        f"{summary.requests} requests, {summary.failures} failed, {summary.tokens} tokens in "
        f"{summary.wall_s:.2f} s: {num(summary.tokens_per_s, '.1f')} tok/s; "
        f"TTFT p50 {num(summary.ttft_p50_ms, '.0f')} ms p95 {num(summary.ttft_p95_ms, '.0f')} ms; "
        f"ITL p50 {num(summary.itl_p50_ms, '.1f')} ms p95 {num(summary.itl_p95_ms, '.1f')} ms"
    )
