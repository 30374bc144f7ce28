"""The model store: archive listing from zip contents, packaging, uploads, registration checks."""

from __future__ import annotations

import doctest
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import yaml

import tschat.ops.store
from apps.tables import archive_row
from tschat.errors import BadRequest
from tschat.ops import store
from tschat.ops.gguf import read_gguf_info, read_gguf_stream
from tschat.ops.serving import ServingRegistry


def tiny_gguf(context_length: int = 4096, file_type: int = 15) -> bytes:
    """A GGUF v3 header with no tensors: architecture, context length, file type."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    kvs = [
        (text("general.architecture"), 8, text("llama")),
        (text("llama.context_length"), 4, struct.pack("<I", context_length)),
        (text("general.file_type"), 4, struct.pack("<I", file_type)),
    ]
    body = b"".join(key + struct.pack("<I", vtype) + value for key, vtype, value in kvs)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + body


def write_archive(
    path: Path,
    *,
    gguf: bytes | None = None,
    config: dict[str, object] | None = None,
    manifest: bool = True,
) -> Path:
    config = (
        config
        if config is not None
        else {
            "minWorkers": 1,
            "maxWorkers": 2,
            "batchSize": 4,
            "maxBatchDelay": 50,
            "responseTimeout": 300,
            "handler": {"model_path": "m.Q4_K_M.gguf", "n_ctx": 1024},
        }
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        if manifest:
            model = {
                "modelName": path.stem,
                "modelVersion": "1.0",
                "configFile": "model-config.yaml",
            }
            archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": model}))
        archive.writestr("model-config.yaml", yaml.safe_dump(config))
        if gguf is not None:
            archive.writestr("m.Q4_K_M.gguf", gguf)
    return path


def test_doctests() -> None:
    result = doctest.testmod(tschat.ops.store)
    assert result.attempted > 0 and result.failed == 0


def test_lists_what_an_archive_holds(tmp_path: Path) -> None:
    write_archive(tmp_path / "mine.mar", gguf=tiny_gguf())
    (tmp_path / "notes.txt").write_text("not an archive")
    [info] = store.list_archives(tmp_path)
    assert info.usable and info.file == "mine.mar" and info.model_name == "mine"
    assert (info.gguf_file, info.quantization) == ("m.Q4_K_M.gguf", "Q4_K_M")
    assert (info.n_ctx, info.trained_context) == (1024, 4096)
    assert (info.batch_size, info.max_batch_delay, info.response_timeout) == (4, 50, 300)
    row = archive_row(info)
    assert row["Workers"] == "1-2" and row["Problem"] == "" and row["Size"].endswith("B")


def test_listing_notices_a_changed_archive(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "mine.mar", gguf=tiny_gguf(context_length=4096))
    assert store.list_archives(tmp_path)[0].trained_context == 4096
    write_archive(path, gguf=tiny_gguf(context_length=8192, file_type=7) + b"\0")
    os.utime(path, ns=(1, 10**18))
    info = store.list_archives(tmp_path)[0]
    assert (info.trained_context, info.quantization) == (8192, "Q8_0")


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_bytes(b"hello"), "not a zip file"),
        (lambda p: write_archive(p, gguf=tiny_gguf(), manifest=False), "no MAR-INF/MANIFEST.json"),
        (lambda p: write_archive(p), "does not contain m.Q4_K_M.gguf"),
        (
            lambda p: write_archive(p, gguf=b"GGUF\x07\0\0\0"),
            "not usable: unsupported GGUF version",
        ),
        (lambda p: write_archive(p, config={"batchSize": 1}), "names no handler.model_path"),
    ],
)
def test_an_unreadable_archive_is_listed_with_its_problem(
    tmp_path: Path, make: object, problem: str
) -> None:
    make(tmp_path / "bad.mar")  # type: ignore[operator]
    [info] = store.list_archives(tmp_path)
    assert not info.usable and info.problem is not None and problem in info.problem, info.problem


def test_missing_store_lists_nothing(tmp_path: Path) -> None:
    assert store.list_archives(tmp_path / "absent") == []


def test_read_gguf_stream_matches_the_file_reader() -> None:
    gguf = store.default_gguf()
    assert gguf is not None
    with open(gguf, "rb") as handle:
        streamed = read_gguf_stream(handle, gguf.stat().st_size, gguf)
    assert streamed == read_gguf_info(gguf)


def test_staged_upload_is_removed_afterwards(tmp_path: Path) -> None:
    with store.staged_upload("../../evil/model.gguf", io.BytesIO(b"GGUF"), tmp_path) as staged:
        assert staged.name == "model.gguf" and staged.parent.parent == tmp_path
        assert staged.read_bytes() == b"GGUF"
    assert not staged.exists() and list(tmp_path.iterdir()) == []


def test_register_archive_checks_worker_range_before_calling_the_server() -> None:
    with pytest.raises(BadRequest, match="Min workers"):
        ServingRegistry(None, Path("model_store")).register(  # type: ignore[arg-type]
            "smollm2.mar",
            model_name="smollm2",
            batch_size=1,
            max_batch_delay=1,
            initial_workers=1,
            min_workers=3,
            max_workers=2,
            response_timeout=10,
        )


def test_continuous_archives_are_known_and_kept_to_one_worker(tmp_path: Path) -> None:
    config = {"batchSize": 8, "continuousBatching": True, "handler": {"model_path": "m.gguf"}}
    write_archive(tmp_path / "cont.mar", config=config)
    write_archive(tmp_path / "dyn.mar", config={**config, "continuousBatching": False})
    assert store.is_continuous(tmp_path, "cont.mar")
    assert not store.is_continuous(tmp_path, "dyn.mar")
    assert not store.is_continuous(tmp_path, "missing.mar")
    assert not store.is_continuous(tmp_path, "../cont.mar")  # only the store's own archives
    with pytest.raises(BadRequest, match="continuous batching"):
        ServingRegistry(None, tmp_path).register(  # type: ignore[arg-type]  # never reached
            "cont.mar",
            model_name="cont",
            batch_size=8,
            max_batch_delay=10,
            initial_workers=1,
            min_workers=1,
            max_workers=2,
            response_timeout=10,
        )
