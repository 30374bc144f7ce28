"""TorchServe's token keys: read key_file.json, notice when it changes, refresh expiring keys.

TorchServe writes ``key_file.json`` into its working directory when it starts::

    {"management": {"key": "...", "expiration time": "2025-01-01T12:00:00.123Z"},
     "inference": {"key": "...", "expiration time": "..."},
     "API": {"key": "..."}}

The inference and management keys expire after ``token_expiration_min``; the API key does not
and is used to ask for a new key (``GET /token?type=inference``), which rewrites the file.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tschat.api.transport import KeyKind, Transport
from tschat.errors import AuthError, KeyFileMissing
from tschat.settings import Settings

REFRESH_MARGIN_S = 30.0


@dataclass(frozen=True)
class Keys:
    """The keys of one TorchServe; a key is None when it is not known (e.g. a remote server)."""

    inference: str | None = None
    management: str | None = None
    api: str | None = None
    inference_expires: datetime | None = None
    management_expires: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Keys:
        """Parse the content of key_file.json.

        >>> keys = Keys.from_json({
        ...     "management": {"key": "m1", "expiration time": "2025-01-01T12:00:00.123456789Z"},
        ...     "inference": {"key": "i1", "expiration time": "2025-01-01T12:00:00Z"},
        ...     "API": {"key": "a1"}})
        >>> keys.inference, keys.management, keys.api
        ('i1', 'm1', 'a1')
        >>> keys.management_expires.isoformat()
        '2025-01-01T12:00:00.123456+00:00'
        >>> Keys.from_json({"inference": {"key": ""}}).inference is None
        True
        """

        def entry(name: str) -> Mapping[str, Any]:
            value = data.get(name)
            return value if isinstance(value, Mapping) else {}

        return cls(
            inference=_text(entry("inference").get("key")),
            management=_text(entry("management").get("key")),
            api=_text(entry("API").get("key")),
            inference_expires=parse_expiration(entry("inference").get("expiration time")),
            management_expires=parse_expiration(entry("management").get("expiration time")),
        )

    @classmethod
    def from_file(cls, path: Path) -> Keys:
        """Read key_file.json; raise :class:`KeyFileMissing` when it is not there."""
        # TorchServe rewrites the file in place (truncate, then write), so a read can land
        # between the two: retry briefly on empty or half-written content.
        for attempt in range(20):
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise KeyFileMissing(str(path)) from None
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                if attempt == 19:
                    raise AuthError(f"{path} is not valid JSON") from None
                time.sleep(0.05)
                continue
            if isinstance(data, dict):
                return cls.from_json(data)
            raise AuthError(f"{path} does not hold a JSON object")
        raise AssertionError("unreachable")

    def key(self, kind: KeyKind) -> str | None:
        """The key of one kind."""
        return self.inference if kind == "inference" else self.management

    def expires(self, kind: KeyKind) -> datetime | None:
        """When the key of one kind expires (None: unknown or never)."""
        return self.inference_expires if kind == "inference" else self.management_expires

    def expires_within(self, kind: KeyKind, seconds: float, now: datetime | None = None) -> bool:
        """Whether the key expires in less than ``seconds`` (False when the expiry is unknown).

        >>> from datetime import timedelta
        >>> t = datetime(2025, 1, 1, tzinfo=timezone.utc)
        >>> keys = Keys(inference="k", inference_expires=t)
        >>> keys.expires_within("inference", 30, now=t - timedelta(seconds=10))
        True
        >>> keys.expires_within("inference", 5, now=t - timedelta(seconds=10))
        False
        """
        expires = self.expires(kind)
        if expires is None:
            return False
        now = now or datetime.now(timezone.utc)
        return (expires - now).total_seconds() < seconds


def parse_expiration(value: object) -> datetime | None:
    """Parse TorchServe's expiration time (Java ``Instant.toString()``, nanoseconds allowed).

    >>> parse_expiration("2024-11-21T20:01:02.123456789Z").isoformat()
    '2024-11-21T20:01:02.123456+00:00'
    >>> parse_expiration("soon") is None
    True
    """
    if not isinstance(value, str) or not value:
        return None
    # Python 3.10's fromisoformat takes neither "Z" nor more than 6 fraction digits.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class KeyStore:
    """Hands out current keys, from key_file.json or from keys given explicitly.

    With a key file, the file is re-read whenever it changes (TorchServe rewrites it on start
    and on refresh), and an inference or management key that is expired or expires within
    ``refresh_margin_s`` is refreshed through the management API with the API key.
    With explicit keys (a remote server), the keys are used as given.
    """

    def __init__(
        self,
        source: Settings | Path | str | None = None,
        *,
        keys: Keys | None = None,
        management_url: str | None = None,
        refresh_margin_s: float = REFRESH_MARGIN_S,
        timeout_s: float = 10.0,
    ) -> None:
        if isinstance(source, Settings):
            self.path: Path | None = source.key_file
            management_url = management_url or source.management_url
        elif source is not None:
            self.path = Path(source)
        else:
            self.path = None
        if self.path is None and keys is None:
            raise ValueError("KeyStore needs a key file (settings or path) or explicit keys")
        self.management_url = management_url
        self.refresh_margin_s = refresh_margin_s
        self.timeout_s = timeout_s
        self._keys = keys
        self._stamp: tuple[int, int, int] | None = None
        self._refreshed_at: dict[str, float] = {}
        self._lock = threading.RLock()

    @classmethod
    def explicit(
        cls,
        *,
        inference: str | None = None,
        management: str | None = None,
        api: str | None = None,
        management_url: str | None = None,
    ) -> KeyStore:
        """Keys the user typed in for a server whose key file is not on this machine."""
        return cls(
            keys=Keys(inference=inference, management=management, api=api),
            management_url=management_url,
        )

    def current(self) -> Keys:
        """The current keys, re-read from the file if it changed."""
        with self._lock:
            if self.path is None:
                assert self._keys is not None
                return self._keys
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._keys, self._stamp = None, None
                raise KeyFileMissing(str(self.path)) from None
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._keys is None or stamp != self._stamp:
                self._keys = Keys.from_file(self.path)
                self._stamp = stamp
            return self._keys

    def key(self, kind: KeyKind) -> str:
        """A usable key of one kind, refreshed first when it is about to expire."""
        with self._lock:
            keys = self.current()
            if self._should_refresh(keys, kind):
                keys = self.refresh(kind)
            value = keys.key(kind)
            if value is None:
                raise AuthError(f"no {kind} key known")
            return value

    def recover(self, kind: KeyKind, rejected: str | None) -> str:
        """Get a different key after TorchServe rejected ``rejected``; raise AuthError if none.

        Another process may already have refreshed the key (the file then holds a new one);
        only when it has not do we ask TorchServe for a new key.
        """
        with self._lock:
            keys = self.current()
            value = keys.key(kind)
            if value is not None and value != rejected:
                return value
            if self.path is None or keys.api is None or self.management_url is None:
                raise AuthError("the key was refused and cannot be refreshed")
            value = self.refresh(kind).key(kind)
            if value is None or value == rejected:
                raise AuthError("refreshing the key did not give a new one")
            return value

    def refresh(self, kind: KeyKind) -> Keys:
        """Ask TorchServe for a new key of one kind and return the keys it wrote."""
        with self._lock:
            keys = self.current()
            if keys.api is None or self.management_url is None:
                raise AuthError(f"cannot refresh the {kind} key without the API key")
            # The API key never expires: one plain request, no refresh-and-retry.
            Transport(self.management_url, timeout=self.timeout_s).request(
                "GET",
                "/token",
                params={"type": kind},
                headers={"Authorization": f"Bearer {keys.api}"},
            )
            self._refreshed_at[kind] = time.monotonic()
            if self.path is None:
                # The new key was written on the server's machine; we cannot read it here.
                return keys
            # Invalidate the cached stamp: a rewrite within the same mtime tick would be missed.
            self._stamp = None
            return self.current()

    def _should_refresh(self, keys: Keys, kind: KeyKind) -> bool:
        if self.path is None or keys.api is None or self.management_url is None:
            return False
        if keys.expires_within(kind, 0):
            return True
        if not keys.expires_within(kind, self.refresh_margin_s):
            return False
        # A key whose whole lifetime is shorter than the margin would be refreshed on every
        # call; refresh it early at most once per margin, and always once it has expired.
        last = self._refreshed_at.get(kind)
        return last is None or time.monotonic() - last > self.refresh_margin_s
