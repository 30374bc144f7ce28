"""The console password: a salted scrypt hash, owner-only, compared in constant time."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from tschat.errors import SettingsError
from tschat.ops import password
from tschat.settings import Settings

SECRET = "correct horse battery staple"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(run_dir=tmp_path / "var")


def test_only_a_salted_hash_is_kept_owner_only(settings: Settings) -> None:
    assert not password.password_is_set(settings)
    path = password.set_password(settings, SECRET)
    assert path == settings.console_password_file and password.password_is_set(settings)
    text = path.read_text()
    assert SECRET not in text and SECRET.encode().hex() not in text
    record = json.loads(text)
    assert record["kdf"] == "scrypt" and len(bytes.fromhex(record["salt"])) == 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.run_dir.stat().st_mode) == 0o700
    first_hash = record["hash"]
    password.set_password(settings, SECRET)
    assert json.loads(path.read_text())["hash"] != first_hash, "a new salt each time"


def test_the_right_password_and_only_it_opens(settings: Settings) -> None:
    password.set_password(settings, SECRET)
    assert password.check_password(settings, SECRET)
    for wrong in ("", SECRET[:-1], SECRET + " ", SECRET.upper()):
        assert not password.check_password(settings, wrong)


def test_no_or_broken_password_file_opens_nothing(settings: Settings) -> None:
    assert not password.check_password(settings, SECRET)
    settings.run_dir.mkdir()
    settings.console_password_file.write_text("{not json")
    assert not password.check_password(settings, SECRET)
    settings.console_password_file.write_text(json.dumps({"kdf": "scrypt", "salt": "zz"}))
    assert not password.check_password(settings, SECRET)


def test_short_passwords_are_refused(settings: Settings) -> None:
    with pytest.raises(SettingsError, match="at least 12 characters"):
        password.set_password(settings, "short")
    assert not password.password_is_set(settings)


def test_command_reads_the_password_from_stdin(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TSCHAT_RUN_DIR", str(settings.run_dir))
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    assert password.main(["--stdin"]) == 0
    assert "password is set" in capsys.readouterr().out
    assert password.check_password(settings, SECRET)
    monkeypatch.setattr("sys.stdin", io.StringIO("tiny\n"))
    assert password.main(["--stdin"]) == 1
    assert "at least 12 characters" in capsys.readouterr().err
    assert password.check_password(settings, SECRET), "a refused password changes nothing"
