"""Keys from key_file.json: parsing, re-reading on change, refreshing expiring keys."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

import pytest

from tschat.api.keys import Keys, KeyStore, parse_expiration
from tschat.errors import AuthError, KeyFileMissing, ServerNotRunning
from tschat.settings import Settings

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer


def _stamp(minutes: float) -> str:
    moment = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    # Java's Instant.toString(): up to nanoseconds, "Z" for UTC.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def write_keys(
    path: Path, inference: str = "inf1", management: str = "man1", minutes: float = 60.0
) -> None:
    data = {
        "management": {"key": management, "expiration time": _stamp(minutes)},
        "inference": {"key": inference, "expiration time": _stamp(minutes)},
        "API": {"key": "api1"},
    }
    path.write_text(json.dumps(data, indent=2))


def test_reads_torchserve_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    write_keys(path)
    keys = Keys.from_file(path)
    assert (keys.inference, keys.management, keys.api) == ("inf1", "man1", "api1")
    assert keys.inference_expires is not None
    assert keys.inference_expires.tzinfo is not None
    assert not keys.expires_within("inference", 60)
    assert keys.expires_within("inference", 2 * 3600)


def test_parse_expiration_variants() -> None:
    assert parse_expiration("2025-01-01T00:00:00Z") == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert parse_expiration("2025-01-01T00:00:00") == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert parse_expiration(None) is None
    assert parse_expiration(12) is None
    assert parse_expiration("") is None


def test_missing_file_says_to_start_torchserve(tmp_path: Path) -> None:
    with pytest.raises(KeyFileMissing, match="make run"):
        Keys.from_file(tmp_path / "key_file.json")
    with pytest.raises(KeyFileMissing):
        KeyStore(tmp_path / "key_file.json").current()


def test_garbage_file_is_an_auth_error(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    path.write_text("[1, 2]")
    with pytest.raises(AuthError):
        Keys.from_file(path)


def test_store_rereads_the_file_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    write_keys(path, inference="first")
    store = KeyStore(path)
    assert store.key("inference") == "first"
    write_keys(path, inference="second")
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert store.key("inference") == "second"
    path.unlink()
    with pytest.raises(KeyFileMissing):
        store.key("inference")


def test_store_from_settings_uses_the_run_dir(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    write_keys(settings.key_file)
    store = KeyStore(settings)
    assert store.path == settings.key_file
    assert store.management_url == settings.management_url
    assert store.key("management") == "man1"


def test_explicit_keys_for_a_remote_server() -> None:
    store = KeyStore.explicit(inference="remote-key")
    assert store.key("inference") == "remote-key"
    with pytest.raises(AuthError):
        store.key("management")
    with pytest.raises(AuthError):
        store.recover("inference", "remote-key")  # nothing to refresh with
    with pytest.raises(ValueError):
        KeyStore()


class _TokenApi(BaseHTTPRequestHandler):
    """Plays TorchServe's /token endpoint: checks the API key, rewrites the key file."""

    key_file: Path
    calls: list[dict[str, Any]] = []
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        kind = parse_qs(url.query).get("type", [""])[0]
        with self.lock:
            type(self).calls.append(
                {"path": url.path, "type": kind, "auth": self.headers.get("Authorization")}
            )
            if self.headers.get("Authorization") != "Bearer api1" or kind not in (
                "inference",
                "management",
            ):
                self._send(400, b'{"code": 400, "type": "InvalidKeyException", "message": "Token"}')
                return
            data = json.loads(self.key_file.read_text())
            data[kind] = {"key": f"{kind}-{len(self.calls)}", "expiration time": _stamp(60)}
            self.key_file.write_text(json.dumps(data))
        self._send(200, b"\n")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def token_api(http_server: Callable[..., LocalServer], tmp_path: Path) -> tuple[LocalServer, Path]:
    path = tmp_path / "key_file.json"
    _TokenApi.key_file = path
    _TokenApi.calls = []
    return http_server(_TokenApi), path


def test_refresh_asks_torchserve_with_the_api_key(token_api: tuple[LocalServer, Path]) -> None:
    server, path = token_api
    write_keys(path)
    store = KeyStore(path, management_url=server.url)
    keys = store.refresh("inference")
    assert keys.inference == "inference-1"
    assert keys.management == "man1"
    assert _TokenApi.calls == [{"path": "/token", "type": "inference", "auth": "Bearer api1"}]


def test_expired_key_is_refreshed_before_use(token_api: tuple[LocalServer, Path]) -> None:
    server, path = token_api
    write_keys(path, minutes=-1)
    store = KeyStore(path, management_url=server.url)
    assert store.key("management") == "management-1"
    assert store.key("management") == "management-1"  # fresh now: no second refresh
    assert len(_TokenApi.calls) == 1


def test_key_about_to_expire_is_refreshed_once_per_margin(
    token_api: tuple[LocalServer, Path],
) -> None:
    server, path = token_api
    write_keys(path, minutes=0.25)  # 15 s left, margin 30 s
    store = KeyStore(path, management_url=server.url, refresh_margin_s=30)
    assert store.key("inference") == "inference-1"
    # The refreshed key lives 60 minutes; a server with very short-lived keys would hand out
    # keys inside the margin again, which must not cause a refresh on every call.
    write_keys(path, inference="short", minutes=0.25)
    os.utime(path, ns=(2, 2))
    assert store.key("inference") == "short"
    assert len(_TokenApi.calls) == 1


def test_recover_prefers_a_key_another_process_wrote(token_api: tuple[LocalServer, Path]) -> None:
    server, path = token_api
    write_keys(path, inference="old")
    store = KeyStore(path, management_url=server.url)
    assert store.key("inference") == "old"
    write_keys(path, inference="written-elsewhere")
    os.utime(path, ns=(3, 3))
    assert store.recover("inference", "old") == "written-elsewhere"
    assert _TokenApi.calls == []
    # Same key rejected again: now ask TorchServe.
    assert store.recover("inference", "written-elsewhere") == "inference-1"


def test_refresh_with_a_wrong_api_key_is_an_auth_error(token_api: tuple[LocalServer, Path]) -> None:
    server, path = token_api
    data = {"inference": {"key": "i"}, "management": {"key": "m"}, "API": {"key": "wrong"}}
    path.write_text(json.dumps(data))
    with pytest.raises(AuthError):
        KeyStore(path, management_url=server.url).refresh("inference")


def test_refresh_without_a_server(tmp_path: Path, helpers: Helpers) -> None:
    path = tmp_path / "key_file.json"
    write_keys(path, minutes=-1)
    store = KeyStore(path, management_url=f"http://127.0.0.1:{helpers.free_port()}")
    with pytest.raises(ServerNotRunning):
        store.key("inference")
