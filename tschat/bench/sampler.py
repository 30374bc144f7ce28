"""Memory and CPU time of the serving processes while a load runs."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence

import psutil


class ProcessSampler:
    """Worker memory and CPU time of each process group while a load runs.

    Peak RSS of each worker is sampled in the background, PSS at the start and the end; CPU
    time is read at the start and the end for the workers, the Java frontend and this process
    (the clients).
    """

    def __init__(self, pids: Sequence[int], frontend: int | None, interval_s: float = 0.5) -> None:
        self.pids = list(pids)
        self.interval_s = interval_s
        self.rss: dict[int, int] = {}
        self.pss: dict[int, int] = {}
        self._groups = {"workers": self.pids, "frontend": [frontend] if frontend else []}
        self._groups["client"] = [os.getpid()]
        self._cpu_start: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-sampler", daemon=True)

    def _cpu(self) -> dict[str, float]:
        used = {}
        for name, pids in self._groups.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(pid).cpu_times()
                    total += times.user + times.system
            used[name] = total
        return used

    def sample(self, full: bool = True) -> None:
        """Record RSS, and PSS too when ``full`` (it walks the page tables: not while timing)."""
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                process_ = psutil.Process(pid)
                info = process_.memory_full_info() if full else process_.memory_info()
                self.rss[pid] = max(self.rss.get(pid, 0), info.rss)
                if full:
                    self.pss[pid] = max(self.pss.get(pid, 0), getattr(info, "pss", 0))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample(full=False)

    def __enter__(self) -> ProcessSampler:
        self.sample()
        self._cpu_start = self._cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._cpu()
        self.cpu_s = {name: end[name] - self._cpu_start[name] for name in end}
        self._stop.set()
        self._thread.join()
        self.sample()

    def mb(self, table: dict[int, int]) -> tuple[float, ...]:
        return tuple(table[pid] / 2**20 for pid in self.pids if table.get(pid))
