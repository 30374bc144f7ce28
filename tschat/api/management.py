"""Client for TorchServe's management API: list, describe, register, unregister, scale models."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from tschat.api.keys import KeyStore
from tschat.api.transport import Transport
from tschat.errors import (
    ArchiveInvalid,
    BadRequest,
    ModelNotFound,
    ServerError,
)
from tschat.settings import Settings

# A bare archive name: TorchServe then loads MODEL_STORE/NAME. Anything with a scheme or a
# path is refused here before it reaches the server (see process.write_config for allowed_urls).
ARCHIVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.mar")
QUICK_TIMEOUT_S = 30.0


def check_archive_name(archive: str) -> str:
    """Return ``archive`` if it is a bare .mar file name (never a URL or a path).

    >>> check_archive_name("smollm2.mar")
    'smollm2.mar'
    >>> check_archive_name("file:///etc/x.mar")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tschat.errors.ArchiveInvalid: Cannot use model archive 'file:///etc/x.mar': give the file...
    """
    if not ARCHIVE_NAME.fullmatch(archive):
        raise ArchiveInvalid(
            archive, "give the file name of a .mar archive in the model store (no URL, no folder)."
        )
    return archive


@dataclass(frozen=True)
class WorkerStatus:
    """One backend worker. ``start_time`` is as TorchServe sends it (server-local time)."""

    id: str
    pid: int | None
    status: str
    memory_usage: int
    gpu: bool
    start_time: str

    @property
    def ready(self) -> bool:
        """Whether the worker has its model loaded and takes requests."""
        return self.status == "READY"


@dataclass(frozen=True)
class ModelStatus:
    """What TorchServe reports about one registered model version."""

    name: str
    version: str
    url: str
    batch_size: int
    max_batch_delay: int
    min_workers: int
    max_workers: int
    response_timeout: int
    startup_timeout: int
    loaded_at_startup: bool
    workers: tuple[WorkerStatus, ...]
    pending_requests: int | None = None
    remaining_capacity: int | None = None

    @property
    def ready_workers(self) -> int:
        """Number of workers that take requests."""
        return sum(worker.ready for worker in self.workers)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelStatus:
        """Parse one entry of ``GET /models/{name}``.

        >>> status = ModelStatus.from_json({
        ...     "modelName": "smollm2", "modelVersion": "1.0", "modelUrl": "smollm2.mar",
        ...     "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 50,
        ...     "responseTimeout": 300, "startupTimeout": 120, "loadedAtStartup": False,
        ...     "workers": [{"id": "9000", "startTime": "2025-01-01T12:00:00.000Z",
        ...                  "status": "READY", "memoryUsage": 123, "pid": 42, "gpu": False}],
        ...     "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0}})
        >>> status.batch_size, status.ready_workers, status.workers[0].pid
        (4, 1, 42)
        """
        queue = data.get("jobQueueStatus") or {}
        return cls(
            name=str(data.get("modelName", "")),
            version=str(data.get("modelVersion", "")),
            url=str(data.get("modelUrl", "")),
            batch_size=int(data.get("batchSize", 1)),
            max_batch_delay=int(data.get("maxBatchDelay", 100)),
            min_workers=int(data.get("minWorkers", 0)),
            max_workers=int(data.get("maxWorkers", 0)),
            response_timeout=int(data.get("responseTimeout", 0)),
            startup_timeout=int(data.get("startupTimeout", 0)),
            loaded_at_startup=bool(data.get("loadedAtStartup", False)),
            workers=tuple(
                WorkerStatus(
                    id=str(worker.get("id", "")),
                    pid=int(worker["pid"]) if worker.get("pid") not in (None, -1) else None,
                    status=str(worker.get("status", "")),
                    memory_usage=int(worker.get("memoryUsage", 0)),
                    gpu=bool(worker.get("gpu", False)),
                    start_time=str(worker.get("startTime", "")),
                )
                for worker in data.get("workers") or []
            ),
            pending_requests=_opt_int(queue.get("pendingRequests")),
            remaining_capacity=_opt_int(queue.get("remainingCapacity")),
        )


@dataclass(frozen=True)
class ModelEntry:
    """One line of ``GET /models``."""

    name: str
    url: str


class ManagementClient:
    """Talks to the management API (default port 8081) with the management key."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyStore | None = None,
        *,
        base_url: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys if keys is not None else KeyStore(settings)
        self.transport = Transport(
            base_url or settings.management_url,
            timeout=QUICK_TIMEOUT_S,
            keys=self.keys,
            kind="management",
            session=session,
        )
        self.base_url = self.transport.base_url

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        model: str | None = None,
        timeout: float = QUICK_TIMEOUT_S,
    ) -> Any:
        """Send one request with the management key and return its JSON."""
        response = self.transport.request(method, path, params=params, model=model, timeout=timeout)
        try:
            return response.json()
        except ValueError:
            return {"status": response.text}

    def list_models(self) -> list[ModelEntry]:
        """All registered models (every page)."""
        models: list[ModelEntry] = []
        params: dict[str, str | int] = {"limit": 100}
        while True:
            data = self._request("GET", "/models", params=params)
            models.extend(
                ModelEntry(name=str(item.get("modelName", "")), url=str(item.get("modelUrl", "")))
                for item in data.get("models", [])
            )
            token = data.get("nextPageToken")
            if not token:
                return models
            params = {"limit": 100, "next_page_token": str(token)}

    def describe_model(self, name: str, version: str | None = None) -> ModelStatus:
        """Status of one model: the default version, or ``version``."""
        path = f"/models/{quote(name, safe='')}"
        if version:
            path += f"/{quote(version, safe='')}"
        data = self._request("GET", path, model=name)
        if not isinstance(data, list) or not data:
            raise ServerError(f"TorchServe's description of model {name!r} was empty.")
        return ModelStatus.from_json(data[0])

    def register_model(
        self,
        archive: str,
        *,
        model_name: str | None = None,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        initial_workers: int = 1,
        response_timeout: int | None = None,
        startup_timeout: int | None = None,
        synchronous: bool = True,
    ) -> str:
        """Register a .mar archive of the store by file name; returns TorchServe's status text.

        The archive's model-config.yaml takes precedence over ``initial_workers`` when it sets
        minWorkers/maxWorkers (TorchServe's rule); an explicit ``batch_size`` wins over it.
        """
        check_archive_name(archive)
        params: dict[str, str | int] = {
            "url": archive,
            "initial_workers": initial_workers,
            "synchronous": "true" if synchronous else "false",
        }
        optional = {
            "model_name": model_name,
            "batch_size": batch_size,
            "max_batch_delay": max_batch_delay,
            "response_timeout": response_timeout,
            "startup_timeout": startup_timeout,
        }
        params.update({key: value for key, value in optional.items() if value is not None})
        try:
            data = self._request("POST", "/models", params=params, timeout=self._long_timeout())
        except BadRequest as error:
            raise ArchiveInvalid(archive, f"TorchServe refused it: {error.message}") from error
        except ModelNotFound as error:
            raise ArchiveInvalid(
                archive, f"TorchServe could not find it: {error.detail}"
            ) from error
        return _status_text(data)

    def unregister_model(self, name: str, version: str | None = None) -> str:
        """Unregister a model (its default version, or ``version``); its workers stop."""
        path = f"/models/{quote(name, safe='')}"
        if version:
            path += f"/{quote(version, safe='')}"
        return _status_text(self._request("DELETE", path, model=name, timeout=self._long_timeout()))

    def scale_workers(
        self, name: str, min_worker: int, max_worker: int | None = None, *, synchronous: bool = True
    ) -> str:
        """Set a model's worker count; with ``synchronous`` wait until the workers run."""
        params: dict[str, str | int] = {
            "min_worker": min_worker,
            "max_worker": max_worker if max_worker is not None else min_worker,
            "synchronous": "true" if synchronous else "false",
        }
        path = f"/models/{quote(name, safe='')}"
        return _status_text(
            self._request("PUT", path, params=params, model=name, timeout=self._long_timeout())
        )

    def _long_timeout(self) -> float:
        return max(self.settings.request_timeout_s, QUICK_TIMEOUT_S)


def _status_text(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("status", data))
    return str(data)


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
