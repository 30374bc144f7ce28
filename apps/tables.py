"""Table rows the console shows, with column names for people."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tschat.api.management import ModelStatus, WorkerStatus
from tschat.bench.experiments import Row
from tschat.ops.gguf import format_size
from tschat.ops.monitor import worker_memory
from tschat.ops.store import ArchiveInfo

MIB = 1024 * 1024


def workers_range(low: int | None, high: int | None) -> str | None:
    """A worker range as shown: "2" when min and max agree, else "1-2".

    >>> workers_range(1, 1), workers_range(1, 2), workers_range(None, None)
    ('1', '1-2', None)
    """
    if low is None:
        return None
    return str(low) if low == high else f"{low}-{high}"


def archive_row(info: ArchiveInfo) -> dict[str, Any]:
    """An archive of the model store as one table row."""
    return {
        "Archive": info.file,
        "Model": info.model_name,
        "Size": format_size(info.size_bytes),
        "GGUF file": info.gguf_file,
        "Quantization": info.quantization,
        "Context (n_ctx)": info.n_ctx,
        "Trained context": info.trained_context,
        "Batch size": info.batch_size,
        "Max delay (ms)": info.max_batch_delay,
        "Batching": "continuous" if info.continuous else "dynamic",
        "Workers": workers_range(info.min_workers, info.max_workers),
        "Modified": info.modified.astimezone().strftime("%Y-%m-%d %H:%M"),
        "Problem": info.problem or "",
    }


def model_row(status: ModelStatus) -> dict[str, Any]:
    """A registered model as one table row."""
    return {
        "model": status.name,
        "version": status.version,
        "archive": status.url,
        "ready workers": f"{status.ready_workers} of {len(status.workers)}",
        "workers (min-max)": workers_range(status.min_workers, status.max_workers),
        "batch size": status.batch_size,
        "max batch delay (ms)": status.max_batch_delay,
        "response timeout (s)": status.response_timeout,
        "queued requests": status.pending_requests,
    }


def worker_rows(
    status: ModelStatus, engines: Mapping[int, Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The workers of a model as table rows: id, status, PID, memory, engine, started."""
    return [_worker_row(worker, (engines or {}).get(worker.pid or -1)) for worker in status.workers]


def _engine_columns(engine: Mapping[str, Any] | None) -> dict[str, Any]:
    """Backend, layers per device and offloaded layers of one worker's engine.

    >>> _engine_columns({"backend": "rpc+cpu", "n_layers": 30, "n_gpu_layers": 31,
    ...                  "layers_by_device": {"RPC0": 16, "RPC1": 15}})
    {'backend': 'rpc+cpu', 'devices': 'RPC0: 16, RPC1: 15', 'offloaded layers': '31/31'}
    """
    if not engine:
        return {"backend": None, "devices": None, "offloaded layers": None}
    devices = engine.get("layers_by_device") or {}
    total = int(engine.get("n_layers") or 0) + 1  # llama.cpp counts the output layer too
    return {
        "backend": engine.get("backend"),
        "devices": ", ".join(f"{name}: {n}" for name, n in devices.items()),
        "offloaded layers": f"{engine.get('n_gpu_layers', 0)}/{total}",
    }


def _worker_row(worker: WorkerStatus, engine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    memory = worker_memory(worker)
    return {
        "id": worker.id,
        "status": worker.status,
        "PID": worker.pid,
        "memory (MiB)": round(memory / MIB, 1) if memory else None,
        "GPU": "yes" if worker.gpu else "no",
        **_engine_columns(engine),
        "started": worker.start_time,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def experiment_rows(rows: Iterable[Row]) -> list[dict[str, object]]:
    """Experiment cells as a table for people: configuration, load and the figures that matter.

    >>> from tschat.bench.loadgen import Summary
    >>> s = Summary(16, 1, 1024, 8.0, 128.0, 40.0, 55.0, 9.0, 12.5, 60.0)
    >>> row = Row("b8", "batch 8", 8, 0.0, 8, 50, 1, 2, False, s, (300.0,))
    >>> experiment_rows([row])[0]["failed"]
    '1/16'
    """
    table: list[dict[str, object]] = []
    for r in rows:
        s = r.summary
        table.append(
            {
                "configuration": r.label,
                "clients": f"{r.clients} ({r.stagger_s:g} s apart)" if r.stagger_s else r.clients,
                "tokens/s": _round(s.tokens_per_s, 1),
                "TTFT p50 (ms)": _round(s.ttft_p50_ms, 0),
                "TTFT p95 (ms)": _round(s.ttft_p95_ms, 0),
                "ITL p50 (ms)": _round(s.itl_p50_ms, 1),
                "failed": f"{s.failures}/{s.requests}",
                "worker RSS (MB)": _round(r.rss_total_mb, 0),
            }
        )
    return table
