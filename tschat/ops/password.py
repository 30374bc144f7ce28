"""The console's password, for when the apps are exposed (TSCHAT_EXPOSE_APPS).

    python -m tschat.ops.password            # asks for it twice
    python -m tschat.ops.password --stdin    # reads it from the first line of stdin

Only a salted scrypt hash is kept, in ``console_password.json`` in the run directory, owner-only
(0600, in a 0700 folder). An attempt is hashed the same way and compared in constant time.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
from pathlib import Path

from tschat.errors import SettingsError, TsChatError
from tschat.ops.process import prepare_run_dir, write_private
from tschat.settings import Settings

MIN_LENGTH = 12
# scrypt's cost: 32 MiB and about 0.1 s per attempt, which also slows guessing.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024
SALT_BYTES = 16


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM)


def set_password(settings: Settings, password: str) -> Path:
    """Store the hash of ``password`` as the console's password; returns the file written."""
    if len(password) < MIN_LENGTH:
        raise SettingsError(
            f"The console password needs at least {MIN_LENGTH} characters; choose a longer one."
        )
    salt = secrets.token_bytes(SALT_BYTES)
    record = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": salt.hex(),
        "hash": _hash(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex(),
    }
    prepare_run_dir(settings)
    write_private(settings.console_password_file, json.dumps(record) + "\n")
    return settings.console_password_file


def password_is_set(settings: Settings) -> bool:
    """Whether a console password has been stored for this run directory."""
    return settings.console_password_file.is_file()


def check_password(settings: Settings, attempt: str) -> bool:
    """Whether ``attempt`` is the console's password (never when none is set or it is broken)."""
    try:
        record = json.loads(settings.console_password_file.read_text(encoding="utf-8"))
        salt = bytes.fromhex(record["salt"])
        expected = bytes.fromhex(record["hash"])
        n, r, p = int(record["n"]), int(record["r"]), int(record["p"])
        if record["kdf"] != "scrypt":
            return False
        actual = _hash(attempt, salt, n, r, p)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Set the operator console's password.")
    parser.add_argument(
        "--stdin", action="store_true", help="read the password from the first line of stdin"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass("New console password: ")
            if getpass.getpass("Again: ") != password:
                print("The two passwords differ; nothing was changed.", file=sys.stderr)
                return 1
        path = set_password(settings, password)
    except TsChatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"The console password is set (its hash is in {path}, readable by {_owner()} only).")
    return 0


def _owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"user {os.getuid()}"


if __name__ == "__main__":
    raise SystemExit(main())
