"""Figures of a benchmark run: table rows, the issue's target ratios, CSV, markdown and a chart.

Two kinds of run: the default one puts our server and llama-server (the peer) under the same
scenarios, cell by cell, next to the in-process limits (:class:`Cell`, :data:`GOALS`); the
batching comparison puts TorchServe configurations side by side (``Row`` of
``tschat.bench.experiments``, :func:`evaluate_targets`).

Everything here is pure except the writers at the end: rows in, text or files out.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from apps.figures import comparison_figure
from tschat.bench.experiments import Row, csv_text, peak_total
from tschat.bench.loadgen import Summary
from tschat.bench.scenarios import DISTINCT, MULTI_TURN

# Row kinds: the two in-process limits and the served cells.
INPROC_SINGLE = "inproc-single"
INPROC_BATCH = "inproc-batch"
BATCH_LIMIT_SLOTS = 8  # the batched limit: eight sequences decoded together, in-process


def _mean(*values: float | None) -> float | None:
    """Mean of optional figures (of those present).

    >>> _mean(1.0, 2.0), _mean(None, 3.0), _mean(None, None), _mean(1.0, 2.0, 6.0)
    (1.5, 3.0, None, 3.0)
    """
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def mean_summary(*summaries: Summary) -> Summary:
    """Measurements of the same thing as one: counts added, figures averaged."""

    def mean(name: str) -> float | None:
        return _mean(*(getattr(s, name) for s in summaries))

    return Summary(
        requests=sum(s.requests for s in summaries),
        failures=sum(s.failures for s in summaries),
        tokens=sum(s.tokens for s in summaries),
        wall_s=sum(s.wall_s for s in summaries),
        tokens_per_s=mean("tokens_per_s"),
        ttft_p50_ms=mean("ttft_p50_ms"),
        ttft_p95_ms=mean("ttft_p95_ms"),
        itl_p50_ms=mean("itl_p50_ms"),
        itl_p95_ms=mean("itl_p95_ms"),
        stream_tps_p50=mean("stream_tps_p50"),
        errors=tuple(dict.fromkeys(e for s in summaries for e in s.errors)),
    )


def mean_row(a: Row, b: Row) -> Row:
    """The mean of two measurements of one row, labelled with both tokens/s figures."""
    speeds = "/".join(_fmt(r.summary.tokens_per_s) for r in (a, b))
    return dataclasses.replace(
        a, label=f"{a.label} (mean of {speeds} tok/s)", summary=mean_summary(a.summary, b.summary)
    )


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, evaluated on a run: ``value`` compared with ``limit``."""

    name: str
    value: float | None
    limit: float
    at_least: bool  # True: value >= limit passes; False: value <= limit passes
    unit: str = "x"
    detail: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def line(self) -> str:
        """One printed line.

        >>> Target("speedup", 2.345, 2.0, True).line()
        'PASS  speedup: 2.35x (target >= 2.00x)'
        >>> Target("ttft", None, 30.0, False, " ms").line()
        'FAIL  ttft: n/a (target <= 30.00 ms)'
        """
        value = "n/a" if self.value is None else f"{self.value:.2f}{self.unit}"
        op = ">=" if self.at_least else "<="
        text = f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {value} "
        text += f"(target {op} {self.limit:.2f}{self.unit})"
        return text + (f"  [{self.detail}]" if self.detail else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0.

    >>> _ratio(3.0, 2.0), _ratio(None, 1.0), _ratio(1.0, 0.0)
    (1.5, None, None)
    """
    if a is None or b is None or b == 0:
        return None
    return a / b


def find(rows: Iterable[Row], config: str, clients: int, staggered: bool = False) -> Row | None:
    """The row of one configuration at one client count (steady or staggered arrivals)."""
    for row in rows:
        if row.config == config and row.clients == clients and (row.stagger_s > 0) == staggered:
            return row
    return None


def evaluate_targets(
    rows: Sequence[Row],
    *,
    single: str,
    two_workers: str,
    batched: Sequence[str],
    continuous: str | None,
    batch_clients: int = 8,
) -> list[Target]:
    """The issue's targets, as ratios within this run's rows.

    ``single`` is the 1-worker batch-1 config, ``two_workers`` the 2-worker one, ``batched``
    the configs meant to scale with clients (dynamic batch 8, continuous).
    """
    targets: list[Target] = []
    inproc_single = find(rows, INPROC_SINGLE, 1)
    inproc_batch = find(rows, INPROC_BATCH, batch_clients)
    served = find(rows, single, 1)
    if served is not None and inproc_single is not None:
        s, i = served.summary, inproc_single.summary
        targets.append(
            Target(
                "served single stream tokens/s vs in-process",
                _ratio(s.tokens_per_s, i.tokens_per_s),
                0.9,
                True,
                detail=f"{_fmt(s.tokens_per_s)} vs {_fmt(i.tokens_per_s)} tok/s",
            )
        )
        delta = (
            None
            if s.ttft_p50_ms is None or i.ttft_p50_ms is None
            else s.ttft_p50_ms - i.ttft_p50_ms
        )
        targets.append(
            Target(
                "served TTFT p50 above in-process, 1 client",
                delta,
                30.0,
                False,
                " ms",
                detail=f"{_fmt(s.ttft_p50_ms)} vs {_fmt(i.ttft_p50_ms)} ms",
            )
        )
    for config in batched:
        many, one = find(rows, config, batch_clients), find(rows, config, 1)
        if many is None:
            continue
        if one is not None:
            targets.append(
                Target(
                    f"{config}: {batch_clients} clients vs 1 client tokens/s",
                    _ratio(many.summary.tokens_per_s, one.summary.tokens_per_s),
                    2.0,
                    True,
                    detail=f"{_fmt(many.summary.tokens_per_s)} vs "
                    f"{_fmt(one.summary.tokens_per_s)} tok/s",
                )
            )
        if inproc_batch is not None:
            targets.append(
                Target(
                    f"{config}: {batch_clients} clients vs raw batched decode of {batch_clients}",
                    _ratio(many.summary.tokens_per_s, inproc_batch.summary.tokens_per_s),
                    0.85,
                    True,
                    detail=f"{_fmt(many.summary.tokens_per_s)} vs "
                    f"{_fmt(inproc_batch.summary.tokens_per_s)} tok/s",
                )
            )
    if continuous is not None:
        staggered = find(rows, continuous, batch_clients, staggered=True)
        if staggered is not None:
            p95 = staggered.summary.ttft_p95_ms
            targets.append(
                Target(
                    f"{continuous}: TTFT p95, {batch_clients} clients arriving "
                    f"{staggered.stagger_s:g} s apart",
                    None if p95 is None else p95 / 1000.0,
                    1.5,
                    False,
                    " s",
                )
            )
    for attr, what in (("rss_total_mb", "RSS"), ("pss_total_mb", "PSS")):
        two, one_worker = peak_total(rows, two_workers, attr), peak_total(rows, single, attr)
        if two is not None and one_worker is not None:
            targets.append(
                Target(
                    f"total {what} of 2 workers vs 1 worker",
                    _ratio(two, one_worker),
                    1.5,
                    False,
                    detail=f"{two:.0f} vs {one_worker:.0f} MB",
                )
            )
    return targets


# ---------------------------------------------------------------- our server against the peer

OURS = "tschat"
PEER = "llama-server"
LIMIT = "limit"  # a Goal's absolute limit, compared with our figure alone


@dataclass(frozen=True)
class Cell:
    """One server (ours, the peer, or an in-process limit) under one scenario and client count."""

    server: str  # OURS, PEER, INPROC_SINGLE or INPROC_BATCH
    scenario: str
    clients: int
    summary: Summary
    turn_ttft_ms: tuple[float | None, ...] = ()  # TTFT p50 of turn 1, 2, ... (multi-turn)
    cpu_server_s: float | None = None  # CPU time of the server's processes during the cell
    cpu_client_s: float | None = None
    load: float | None = None  # the machine's 1-minute load average at the end of the cell
    label: str = ""

    @property
    def tokens_per_s(self) -> float | None:
        return self.summary.tokens_per_s

    @property
    def ttft_p50_ms(self) -> float | None:
        return self.summary.ttft_p50_ms

    @property
    def ttft_p95_ms(self) -> float | None:
        return self.summary.ttft_p95_ms

    @property
    def last_turn_ttft_ms(self) -> float | None:
        """TTFT p50 of the last turn of the chats (turn 10 of ten-turn chats)."""
        return self.turn_ttft_ms[-1] if self.turn_ttft_ms else None

    def as_csv(self) -> dict[str, object]:
        return {
            "server": self.server,
            "label": self.label or self.server,
            "scenario": self.scenario,
            "clients": self.clients,
            **summary_csv(self.summary),
            "last_turn_ttft_ms": _round(self.last_turn_ttft_ms, 1),
            "turn_ttft_ms": ";".join("" if t is None else f"{t:.1f}" for t in self.turn_ttft_ms),
            "cpu_server_s": _round(self.cpu_server_s, 2),
            "cpu_client_s": _round(self.cpu_client_s, 2),
            "load_1min": _round(self.load, 2),
        }


def summary_csv(summary: Summary) -> dict[str, object]:
    """Every figure of a summary under its own name, rounded; errors joined.

    >>> row = summary_csv(Summary(2, 0, 9, 1.23456, 7.291, *[None] * 5, ("a", "b")))
    >>> row["wall_s"], row["tokens_per_s"], row["ttft_p50_ms"], row["errors"]
    (1.235, 7.29, None, 'a | b')
    """
    out: dict[str, object] = {}
    for f in dataclasses.fields(summary):
        value = getattr(summary, f.name)
        if isinstance(value, float):
            value = round(value, 3 if f.name == "wall_s" else 2)
        elif isinstance(value, tuple):
            value = " | ".join(value)
        out[f.name] = value
    return out


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def mean_cell(*cells: Cell) -> Cell:
    """Measurements of one cell as one: counts added, figures averaged.

    >>> s = lambda tps: Summary(8, 0, 800, 4.0, tps, 300.0, 600.0, 9.0, 12.0, 50.0)
    >>> cell = mean_cell(Cell(OURS, "distinct", 8, s(90.0), turn_ttft_ms=(100.0, 200.0)),
    ...                  Cell(OURS, "distinct", 8, s(110.0), turn_ttft_ms=(140.0, None)))
    >>> cell.tokens_per_s, cell.summary.requests, cell.turn_ttft_ms, cell.label
    (100.0, 16, (120.0, 200.0), 'tschat (mean of 90.0/110.0 tok/s)')
    """
    first = cells[0]
    speeds = "/".join(_fmt(c.tokens_per_s) for c in cells)
    turns = max(len(c.turn_ttft_ms) for c in cells)
    return dataclasses.replace(
        first,
        summary=mean_summary(*(c.summary for c in cells)),
        turn_ttft_ms=tuple(
            _mean(*(c.turn_ttft_ms[n] for c in cells if n < len(c.turn_ttft_ms)))
            for n in range(turns)
        ),
        cpu_server_s=_mean(*(c.cpu_server_s for c in cells)),
        cpu_client_s=_mean(*(c.cpu_client_s for c in cells)),
        label=f"{first.label or first.server} (mean of {speeds} tok/s)",
        load=_mean(*(c.load for c in cells)),
    )


def mean_repeats(cells: Sequence[Cell]) -> list[Cell]:
    """One cell per server, scenario and client count: the mean of its repeats, in first order.

    >>> s = lambda tps: Summary(8, 0, 800, 4.0, tps, 300.0, 600.0, 9.0, 12.0, 50.0)
    >>> cells = [Cell(OURS, "distinct", 8, s(90.0)), Cell(PEER, "distinct", 8, s(100.0)),
    ...          Cell(PEER, "distinct", 8, s(80.0)), Cell(OURS, "distinct", 8, s(100.0))]
    >>> [(c.server, c.tokens_per_s) for c in mean_repeats(cells)]
    [('tschat', 95.0), ('llama-server', 90.0)]
    >>> mean_repeats(cells[:2]) == cells[:2]  # measured once: as they were
    True
    """
    groups: dict[tuple[str, str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.server, cell.scenario, cell.clients), []).append(cell)
    return [group[0] if len(group) == 1 else mean_cell(*group) for group in groups.values()]


def repeat_ratios(cells: Sequence[Cell]) -> str:
    """Each repeat's tokens/s ratio (ours over the peer's), per cell measured more than once.

    >>> s = lambda tps: Summary(8, 0, 800, 4.0, tps, 300.0, 600.0, 9.0, 12.0, 50.0)
    >>> print(repeat_ratios([Cell(OURS, "distinct", 8, s(90.0)), Cell(PEER, "distinct", 8,
    ...     s(100.0)), Cell(PEER, "distinct", 8, s(80.0)), Cell(OURS, "distinct", 8, s(100.0))]))
    tokens/s ours over llama-server's, each repeat: distinct, 8 clients: 0.90, 1.25
    """
    parts = []
    keys = dict.fromkeys((c.scenario, c.clients) for c in cells if c.server == OURS)
    for scenario, clients in keys:
        mine, theirs = (
            [c for c in cells if (c.server, c.scenario, c.clients) == (server, scenario, clients)]
            for server in (OURS, PEER)
        )
        if len(mine) < 2 or len(mine) != len(theirs):
            continue
        ratios = [_ratio(a.tokens_per_s, b.tokens_per_s) for a, b in zip(mine, theirs, strict=True)]
        parts.append(
            f"{scenario}, {clients} client{'s' if clients > 1 else ''}: "
            + ", ".join("-" if r is None else f"{r:.2f}" for r in ratios)
        )
    if not parts:
        return ""
    return f"tokens/s ours over {PEER}'s, each repeat: " + "; ".join(parts)


@dataclass(frozen=True)
class Goal:
    """One of the issue's targets, declared once, evaluated per (scenario, clients) cell.

    ``against`` is PEER (our figure over the peer's in the same cell), INPROC_BATCH (our
    figure over the in-process batched limit) or LIMIT (our figure itself, in ``unit``).
    """

    name: str
    metric: str  # a Cell property: tokens_per_s, ttft_p50_ms, ttft_p95_ms, last_turn_ttft_ms
    against: str
    limit: float
    at_least: bool
    clients: tuple[int, ...]
    scenarios: tuple[str, ...]
    unit: str = "x"


def step_profile(before: dict[str, float] | None, after: dict[str, float]) -> str:
    """Where the worker's time went between two of its step profiles, per decode step.

    >>> a = dict(calls=10, steps=10, prefill_steps=1, tokens=30, sampled=20, between_calls=0.03,
    ...          admit=0.001, step=0.5, respond=0.002, build=0.0, build_s=0.001, decode_s=0.48,
    ...          prefill_decode_s=0.2, sample_s=0.002, detok_s=0.001)
    >>> print(step_profile(None, a))  # doctest: +NORMALIZE_WHITESPACE
    10 steps in 10 handler calls (1 with a prompt chunk), 3.0 tokens decoded and 2.0 sampled per
    step; ms per step: between calls 3.000, admit 0.100, build 0.100, llama_decode 48.000 (steps
    with a prompt chunk 200.000 each, the others 31.111), sample 0.200, detokenize 0.100,
    respond 0.200
    """
    d = {k: v - (before or {}).get(k, 0.0) for k, v in after.items()}
    steps = d.get("steps", 0.0)
    if steps <= 0:
        return "no decode steps"
    prefill = d.get("prefill_steps", 0.0)
    plain = steps - prefill

    def ms(key: str, per: float = steps) -> str:
        return f"{1000 * d.get(key, 0.0) / per:.3f}" if per else "-"

    others = d.get("decode_s", 0.0) - d.get("prefill_decode_s", 0.0)
    return (
        f"{steps:.0f} steps in {d.get('calls', 0):.0f} handler calls ({prefill:.0f} with a prompt "
        f"chunk), {d.get('tokens', 0) / steps:.1f} tokens decoded and "
        f"{d.get('sampled', 0) / steps:.1f} sampled per step; ms per step: "
        f"between calls {ms('between_calls')}, admit {ms('admit')}, build {ms('build_s')}, "
        f"llama_decode {ms('decode_s')} (steps with a prompt chunk "
        f"{ms('prefill_decode_s', prefill)} each, the others "
        f"{(f'{1000 * others / plain:.3f}' if plain else '-')}), sample {ms('sample_s')}, "
        f"detokenize {ms('detok_s')}, respond {ms('respond')}"
        + (f"; {d['moves']:.0f} sequences moved down into a gap" if d.get("moves") else "")
    )


GOALS = (
    Goal("tokens/s vs llama-server", "tokens_per_s", PEER, 1.0, True, (1, 8, 16),
         (DISTINCT, MULTI_TURN)),
    Goal(f"tokens/s vs in-process batched decode of {BATCH_LIMIT_SLOTS}", "tokens_per_s",
         INPROC_BATCH, 0.9, True, (BATCH_LIMIT_SLOTS,), (DISTINCT,)),
    Goal("TTFT p50 vs llama-server", "ttft_p50_ms", PEER, 1.0, False, (8,),
         (DISTINCT, MULTI_TURN)),
    Goal("TTFT p95", "ttft_p95_ms", LIMIT, 2000.0, False, (16,), (DISTINCT, MULTI_TURN),
         " ms"),
    Goal("last-turn TTFT p50 vs llama-server", "last_turn_ttft_ms", PEER, 1.0, False, (8,),
         (MULTI_TURN,)),
)  # fmt: skip


def find_cell(cells: Iterable[Cell], server: str, scenario: str, clients: int) -> Cell | None:
    return next(
        (c for c in cells if (c.server, c.scenario, c.clients) == (server, scenario, clients)),
        None,
    )


def evaluate_goals(cells: Sequence[Cell], goals: Sequence[Goal] = GOALS) -> list[Target]:
    """The goals on this run's cells; a cell not measured (e.g. no peer) is left out.

    >>> s = lambda tps, ttft: Summary(8, 0, 800, 4.0, tps, ttft, 2 * ttft, 9.0, 12.0, 50.0)
    >>> cells = [Cell(OURS, "distinct", 8, s(180.0, 300.0)),
    ...          Cell(PEER, "distinct", 8, s(200.0, 250.0)),
    ...          Cell(INPROC_BATCH, "distinct", 8, s(190.0, 40.0))]
    >>> for t in evaluate_goals(cells): print(t.line())
    FAIL  tokens/s vs llama-server, distinct, 8 clients: 0.90x (target >= 1.00x)  [180.0 vs 200.0]
    PASS  tokens/s vs in-process batched decode of 8, distinct, 8 clients: 0.95x (target >= 0.90x)  [180.0 vs 190.0]
    FAIL  TTFT p50 vs llama-server, distinct, 8 clients: 1.20x (target <= 1.00x)  [300.0 vs 250.0]
    """  # noqa: E501
    targets = []
    for goal in goals:
        for scenario in goal.scenarios:
            for clients in goal.clients:
                ours = find_cell(cells, OURS, scenario, clients)
                if ours is None:
                    continue
                mine = getattr(ours, goal.metric)
                name = f"{goal.name}, {scenario}, {clients} client{'s' if clients > 1 else ''}"
                if goal.against == LIMIT:
                    targets.append(Target(name, mine, goal.limit, goal.at_least, goal.unit))
                    continue
                # The in-process limit of the goal's batch, whatever its client count.
                other = (
                    find_cell(cells, PEER, scenario, clients)
                    if goal.against == PEER
                    else next((c for c in cells if c.server == goal.against), None)
                )
                if other is None:
                    continue
                theirs = getattr(other, goal.metric)
                targets.append(
                    Target(
                        name, _ratio(mine, theirs), goal.limit, goal.at_least, goal.unit,
                        detail=f"{_fmt(mine)} vs {_fmt(theirs)}",
                    )
                )  # fmt: skip
    return targets


def _pair(ours: float | None, peer: float | None, digits: int = 1) -> tuple[str, str, str]:
    ratio = _ratio(ours, peer)
    return _fmt(ours, digits), _fmt(peer, digits), "-" if ratio is None else f"{ratio:.2f}"


def peer_table(cells: Sequence[Cell]) -> str:
    """Per scenario and client count: our figure, the peer's and the ratio, as markdown.

    >>> s = Summary(8, 0, 800, 4.0, 200.0, 100.0, 150.0, 9.0, 12.0, 50.0)
    >>> t = peer_table([Cell(OURS, "distinct", 8, s, load=1.5), Cell(PEER, "distinct", 8, s)])
    >>> t.splitlines()[2]
    '| distinct | 8 | 200.0 | 200.0 | 1.00 | 100 | 100 | 1.00 | 150 | 150 | - | - | 0/8 | 0/8 | 1.5 |'
    """  # noqa: E501
    head = (
        "| scenario | clients | tok/s ours | tok/s peer | ratio | TTFT p50 ours | TTFT p50 peer "
        "| ratio | TTFT p95 ours | TTFT p95 peer | last-turn TTFT ours | last-turn TTFT peer "
        "| failed ours | failed peer | load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keys = dict.fromkeys((c.scenario, c.clients) for c in cells if c.server == OURS)
    for scenario, clients in keys:
        ours = find_cell(cells, OURS, scenario, clients)
        peer = find_cell(cells, PEER, scenario, clients)
        assert ours is not None
        tps = _pair(ours.tokens_per_s, peer.tokens_per_s if peer else None)
        p50 = _pair(ours.ttft_p50_ms, peer.ttft_p50_ms if peer else None, 0)
        p95 = _pair(ours.ttft_p95_ms, peer.ttft_p95_ms if peer else None, 0)
        last = _pair(ours.last_turn_ttft_ms, peer.last_turn_ttft_ms if peer else None, 0)
        failed = [f"{c.summary.failures}/{c.summary.requests}" if c else "-" for c in (ours, peer)]
        loads = [_fmt(c.load) for c in (ours, peer) if c is not None and c.load is not None]
        lines.append(
            f"| {scenario} | {clients} | {' | '.join(tps)} | {' | '.join(p50)} "
            f"| {p95[0]} | {p95[1]} | {last[0]} | {last[1]} | {failed[0]} | {failed[1]} "
            f"| {'/'.join(loads) or '-'} |"
        )
    return "\n".join(lines)


def limits_table(cells: Sequence[Cell]) -> str:
    """The in-process limits as markdown."""
    lines = [
        "| limit | requests | tok/s | TTFT p50 ms | ITL p50 ms | load |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        if c.server in (INPROC_SINGLE, INPROC_BATCH):
            lines.append(
                f"| {c.label or c.server} | {c.summary.requests} | {_fmt(c.tokens_per_s)} "
                f"| {_fmt(c.ttft_p50_ms, 0)} | {_fmt(c.summary.itl_p50_ms)} | {_fmt(c.load)} |"
            )
    return "\n".join(lines)


def peer_report(
    cells: Sequence[Cell], targets: Sequence[Target], machine: str, command: str, notes: str = ""
) -> str:
    """The markdown of a run against the peer: both tables, then the targets."""
    tables = [
        "Times in ms; ratio = ours / peer (tokens/s: higher is better for us; TTFT: lower).",
        peer_table(cells),
        limits_table(cells),
    ]
    title = "Benchmark figures: this project and llama-server"
    return _document(title, tables, targets, machine, command, notes)


def _document(
    title: str,
    tables: Sequence[str],
    targets: Sequence[Target],
    machine: str,
    command: str,
    notes: str,
) -> str:
    parts = [f"# {title}", f"Machine: {machine}", f"Command: `{command}`", *tables]
    parts.append("## Targets\n\n" + "\n".join(f"- {t.line()}" for t in targets))
    if notes:
        parts.append(notes)
    return "\n\n".join(parts) + "\n"


def cells_csv(cells: Iterable[Cell]) -> str:
    out = io.StringIO()
    rows = [c.as_csv() for c in cells]
    fields = list(Cell(OURS, "", 1, _EMPTY).as_csv())
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


_EMPTY = Summary(0, 0, 0, 0.0, None, None, None, None, None, None)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- text


def machine_description() -> str:
    """CPU model and core count of this machine, for the record."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, {platform.system()} {platform.release()}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub markdown table.

    >>> row = Row("b8", "batch 8", 8, 0.0, 8, 50, 1, 2, False,
    ...           Summary(16, 0, 1024, 8.0, 128.0, 40.0, 55.0, 9.0, 12.5, 60.0), (300.0,), (200.0,))
    >>> print(markdown_table([row]).splitlines()[2])
    | batch 8 | 8 | 128.0 | 40 | 55 | 9.0 | 12.5 | 0/16 | 300 | 200 |
    """
    head = (
        "| configuration | clients | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms "
        "| ITL p95 ms | failed | worker RSS MB | worker PSS MB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r.summary
        clients = f"{r.clients} (staggered {r.stagger_s:g} s)" if r.stagger_s else str(r.clients)
        lines.append(
            f"| {r.label} | {clients} | {_fmt(s.tokens_per_s)} | {_fmt(s.ttft_p50_ms, 0)} "
            f"| {_fmt(s.ttft_p95_ms, 0)} | {_fmt(s.itl_p50_ms)} | {_fmt(s.itl_p95_ms)} "
            f"| {s.failures}/{s.requests} "
            f"| {'+'.join(f'{m:.0f}' for m in r.worker_rss_mb) or '-'} "
            f"| {'+'.join(f'{m:.0f}' for m in r.worker_pss_mb) or '-'} |"
        )
    return "\n".join(lines)


def markdown_report(
    rows: Sequence[Row], targets: Sequence[Target], machine: str, command: str, notes: str = ""
) -> str:
    return _document("Benchmark figures", [markdown_table(rows)], targets, machine, command, notes)


# ---------------------------------------------------------------- files


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(rows), encoding="utf-8")
    return path


def write_chart(rows: Sequence[Row], path: Path, title: str) -> Path:
    """A self-contained Plotly HTML page: throughput, TTFT, inter-token latency, memory."""
    limits = [r for r in rows if r.config in (INPROC_SINGLE, INPROC_BATCH)]
    served = [r for r in rows if r.config not in (INPROC_SINGLE, INPROC_BATCH)]
    fig = comparison_figure(served, title, limits)
    fig.update_layout(height=900)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def write_peer_chart(cells: Sequence[Cell], path: Path, title: str) -> Path:
    """A self-contained Plotly page: tokens/s and time to first token per scenario, both servers."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    scenarios = list(dict.fromkeys(c.scenario for c in cells if c.server == OURS))
    fig = make_subplots(
        rows=2,
        cols=max(len(scenarios), 1),
        subplot_titles=[f"{s}: tokens/s" for s in scenarios]
        + [f"{s}: TTFT ms (p50 solid, p95 dotted)" for s in scenarios],
        vertical_spacing=0.15,
    )
    colors = {OURS: "#1f77b4", PEER: "#ff7f0e"}
    for col, scenario in enumerate(scenarios, 1):
        for server, color in colors.items():
            mine = sorted(
                (c for c in cells if (c.server, c.scenario) == (server, scenario)),
                key=lambda c: c.clients,
            )
            if not mine:
                continue
            x = [c.clients for c in mine]
            for row, attr, dash in (
                (1, "tokens_per_s", "solid"),
                (2, "ttft_p50_ms", "solid"),
                (2, "ttft_p95_ms", "dot"),
            ):
                fig.add_trace(
                    go.Scatter(
                        x=x, y=[getattr(c, attr) for c in mine], mode="lines+markers",
                        name=server, legendgroup=server,
                        showlegend=(col, attr) == (1, "tokens_per_s"),
                        line={"color": color, "dash": dash},
                    ),
                    row=row,
                    col=col,
                )  # fmt: skip
        for limit in (c for c in cells if c.server == INPROC_BATCH and c.scenario == scenario):
            if limit.tokens_per_s is not None:
                fig.add_hline(
                    y=limit.tokens_per_s, line_dash="dash", line_color="grey",
                    annotation_text=f"in-process, {limit.clients} slots", row=1, col=col,
                )  # fmt: skip
        for row in (1, 2):
            fig.update_xaxes(title_text="clients", type="log", row=row, col=col,
                             tickvals=sorted({c.clients for c in cells}))  # fmt: skip
    fig.update_layout(title=title, height=750, width=1200)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
