"""Watch a folder tree with inotify and record the mode of everything the moment it appears.

Each file or folder created, written, moved in or changed in its attributes under the root is
looked at (lstat) as soon as its event is read, and its mode recorded: a file that is readable
by others for a while shows up with that mode.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
from pathlib import Path
from types import TracebackType

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x8, 0x80, 0x100
IN_Q_OVERFLOW, IN_ISDIR = 0x4000, 0x40000000
MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class FolderWatch:
    """``with FolderWatch(root) as watch: ...``; then ``watch.seen`` lists (path, st_mode)."""

    def __init__(self, root: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._folders: dict[int, Path] = {}
        self.seen: list[tuple[Path, int]] = []
        self.overflowed = False
        self._stop = threading.Event()
        self._watch(root)
        self._thread = threading.Thread(target=self._run, name="folder-watch", daemon=True)

    def __enter__(self) -> FolderWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        os.close(self._fd)

    def _watch(self, folder: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), MASK)
        if wd < 0:
            return  # gone already
        self._folders[wd] = folder
        self._look(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:  # made before the watch existed
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                self._watch(path)
            else:
                self._look(path)

    def _look(self, path: Path) -> None:
        try:
            self.seen.append((path, os.lstat(path).st_mode))
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                wd, mask, _, length = EVENT.unpack_from(data, offset)
                name = data[offset + EVENT.size : offset + EVENT.size + length].rstrip(b"\0")
                offset += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                folder = self._folders.get(wd)
                if folder is None or not name:
                    continue
                path = folder / os.fsdecode(name)
                if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch(path)
                else:
                    self._look(path)
