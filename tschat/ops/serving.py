"""The serving registry: the one place that registers, scales, retunes and unregisters models.

Every caller that puts an archive into service goes through :class:`ServingRegistry`: the
console, ``make run`` (:mod:`tschat.run`), the Experiments tab and the benchmarks, and the
screenshot scripts. It holds the rules of serving in one place:

* only ``.mar`` files directly in the model store are registered, by file name;
* a continuous-batching archive keeps one worker: TorchServe 0.12 stalls such a model once it
  has a second worker (an idle worker's poll holds the model's job queue);
* batch size and delay change only by registering again, so :meth:`ServingRegistry.retune`
  unregisters and registers, and puts the previous registration back when that fails;
* the worker range asked for is applied right after registering (the archive's own
  minWorkers/maxWorkers win over ``initial_workers`` in TorchServe);
* waiting until workers are READY.
"""

from __future__ import annotations

import time
from pathlib import Path

from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient, ModelStatus, check_archive_name
from tschat.errors import (
    ArchiveInvalid,
    BadRequest,
    ModelNotFound,
    ModelNotReady,
    ServerError,
    TsChatError,
)
from tschat.ops.store import check_model_name, is_continuous
from tschat.settings import Settings

CONTINUOUS_ONE_WORKER = (
    "TorchServe 0.12 stalls a continuous-batching model that has more than one worker; "
    "register a dynamic-batching archive (package_model.sh --dynamic-batching) to use several"
)
READY_POLL_S = 0.5


class ServingRegistry:
    """Puts the archives of one model store into service on one TorchServe."""

    def __init__(self, management: ManagementClient, model_store: Path | None = None) -> None:
        self.management = management
        self.model_store = model_store or management.settings.model_store

    @classmethod
    def for_settings(cls, settings: Settings, keys: KeyStore | None = None) -> ServingRegistry:
        """The registry of the TorchServe and model store that ``settings`` describe."""
        return cls(ManagementClient(settings, keys or KeyStore(settings)), settings.model_store)

    # ------------------------------------------------------------ rules

    def check_archive(self, archive: str) -> str:
        """Return ``archive`` if it names a .mar file in the model store; else ArchiveInvalid."""
        check_archive_name(archive)
        store = self.model_store
        # The store can only be checked when it is on this machine (not for a remote server).
        if store.is_dir() and not (store / archive).is_file():
            raise ArchiveInvalid(archive, f"there is no such file in {store}.")
        return archive

    def _check_workers(self, name: str, archive: str, workers: int) -> None:
        if workers > 1 and is_continuous(self.model_store, archive):
            raise BadRequest(f"{name} uses continuous batching: {CONTINUOUS_ONE_WORKER}.")

    # ------------------------------------------------------------ actions

    def register(
        self,
        archive: str,
        *,
        model_name: str | None = None,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        initial_workers: int = 1,
        min_workers: int | None = None,
        max_workers: int | None = None,
        response_timeout: int | None = None,
    ) -> ModelStatus:
        """Register an archive of the store (``model_name``: its name, else the archive's).

        With ``min_workers`` and ``max_workers`` the model gets that worker range right after
        registering. Returns the model's status once TorchServe has started its workers.
        """
        if model_name is not None:
            check_model_name(model_name)
        wanted: tuple[int, int] | None = None
        if min_workers is not None or max_workers is not None:
            low = min_workers if min_workers is not None else initial_workers
            high = max_workers if max_workers is not None else max(low, initial_workers)
            if not 1 <= low <= high:
                raise BadRequest(
                    f"Min workers ({low}) must be at least 1 and at most max workers ({high})."
                )
            wanted = (low, high)
        self.check_archive(archive)
        self._check_workers(archive, archive, max(initial_workers, wanted[1] if wanted else 0))
        name = model_name or archive.removesuffix(".mar")
        self._register(archive, model_name, batch_size, max_batch_delay, initial_workers,
                       response_timeout)  # fmt: skip
        status = self.management.describe_model(name)
        return self._keep_workers(status, *wanted) if wanted else status

    def is_registered(self, name: str) -> bool:
        """Whether a model called ``name`` is registered."""
        try:
            self.management.describe_model(name)
        except ModelNotFound:
            return False
        return True

    def scale(self, name: str, min_workers: int, max_workers: int) -> ModelStatus:
        """Change a model's worker range live and wait for the workers."""
        if max_workers > 1:
            self._check_workers(name, self.management.describe_model(name).url, max_workers)
        self.management.scale_workers(name, min_workers, max_workers, synchronous=True)
        return self.management.describe_model(name)

    def retune(
        self, name: str, *, batch_size: int, max_batch_delay: int, archive: str | None = None
    ) -> ModelStatus:
        """Register a model again with new batch settings, keeping its archive and workers.

        TorchServe cannot change the batch size of a registered model, so this unregisters it
        and registers it again. If the new registration fails, the previous one is registered
        again before the error is raised, so the model is never left unregistered. A model
        that is not registered is registered from ``archive`` (default ``NAME.mar``).
        """
        try:
            old: ModelStatus | None = self.management.describe_model(name)
        except ModelNotFound:
            old = None
        archive = self.check_archive(archive or (old.url if old else f"{name}.mar"))
        low = max(old.min_workers, 1) if old else 1
        high = max(old.max_workers, 1) if old else 1
        if old is not None:
            self.management.unregister_model(name, old.version)
        try:
            timeout = old.response_timeout if old else None
            self._register(archive, name, batch_size, max_batch_delay, low, timeout)
        except TsChatError as error:
            if old is None:
                raise
            self._restore(old, error)
            raise
        status = self.management.describe_model(name)
        return self._keep_workers(status, low, high) if old else status

    def unregister(self, name: str, version: str | None = None) -> str:
        """Unregister a model (its default version, or ``version``); its workers stop."""
        return self.management.unregister_model(name, version)

    def wait_until_ready(
        self, name: str, timeout: float = 120.0, *, workers: int = 1, poll_s: float = READY_POLL_S
    ) -> ModelStatus:
        """Poll until ``workers`` workers are READY; ModelNotReady after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.management.describe_model(name)
            if status.ready_workers >= workers:
                return status
            if time.monotonic() >= deadline:
                states = ", ".join(worker.status for worker in status.workers) or "no workers"
                raise ModelNotReady(name, states)
            time.sleep(poll_s)

    # ------------------------------------------------------------ helpers

    def _register(
        self,
        archive: str,
        name: str | None,
        batch_size: int | None,
        max_batch_delay: int | None,
        workers: int,
        response_timeout: int | None,
    ) -> None:
        """The one call that registers: synchronous, so TorchServe has started the workers."""
        self.management.register_model(
            archive,
            model_name=name,
            batch_size=batch_size,
            max_batch_delay=max_batch_delay,
            initial_workers=workers,
            response_timeout=response_timeout,
            synchronous=True,
        )

    def _keep_workers(self, status: ModelStatus, low: int, high: int) -> ModelStatus:
        if (status.min_workers, status.max_workers) == (low, high):
            return status
        self.management.scale_workers(status.name, low, high, synchronous=True)
        return self.management.describe_model(status.name)

    def _restore(self, old: ModelStatus, cause: TsChatError) -> None:
        try:
            self.management.unregister_model(old.name)
        except ModelNotFound:
            pass  # the failed registration left nothing behind (the usual case)
        try:
            self._register(old.url, old.name, old.batch_size, old.max_batch_delay,
                           max(old.min_workers, 1), old.response_timeout)  # fmt: skip
        except TsChatError as error:
            raise ServerError(
                f"Changing model {old.name!r} failed ({cause}) and registering its previous "
                f"settings failed too ({error}). Register it again from the server console."
            ) from error
