"""Re-quantize a GGUF model with llama.cpp's own quantizer (through llama-cpp-python).

    python -m tschat.ops.quantize SRC.gguf DST.gguf Q4_K_M [--threads N] [--allow-requantize]

The source should be full or near-full precision (F32, F16, BF16 or Q8_0).  Quantizing an
already low-bit model again compounds the rounding error, so that is refused unless
--allow-requantize is given.  llama.cpp prints one progress line per tensor on stderr.
The output appears under DST only once it is complete.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tschat.ops.gguf import FILE_TYPES, GGUFInfo, NotGGUFError, format_size, read_gguf_info

SOURCE_TYPES = ("F32", "F16", "BF16", "Q8_0")
# The targets the console offers first; llama.cpp knows more (TARGET_TYPES).
QUANTIZATIONS = ("Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
# Every llama_ftype that llama.cpp can produce from a float model (MXFP4_MOE needs an MoE model).
_FTYPE_BY_NAME = {name: ftype for ftype, name in FILE_TYPES.items() if name != "MXFP4_MOE"}
TARGET_TYPES = tuple(_FTYPE_BY_NAME)


class QuantizeError(Exception):
    """Quantizing is not possible or failed; the message tells the user what to do."""


def _types_list() -> str:
    return ", ".join(TARGET_TYPES)


def check_target(
    info: GGUFInfo, target: str, *, allow_requantize: bool = False, source: Path | None = None
) -> int:
    """The llama_ftype of ``target`` if a model like ``info`` may be quantized to it.

    Raises:
        QuantizeError: an unknown type, or a low-bit source without ``allow_requantize``.
    """
    target = target.upper()
    if target not in _FTYPE_BY_NAME:
        raise QuantizeError(f"unknown quantization type {target!r}; choose one of: {_types_list()}")
    if info.quantization not in SOURCE_TYPES and not allow_requantize:
        what = str(source) if source is not None else "the model"
        raise QuantizeError(
            f"{what} is already quantized to {info.quantization}; quantizing it again to "
            f"{target} compounds the rounding error. Start from an F32, F16, BF16 or Q8_0 "
            "model, or pass --allow-requantize to do it anyway."
        )
    return _FTYPE_BY_NAME[target]


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    target: str,
    *,
    threads: int = 0,
    allow_requantize: bool = False,
    force: bool = False,
) -> Path:
    """Write DST, a copy of SRC quantized to TARGET (a name such as "Q4_K_M").

    Raises:
        NotGGUFError: SRC is not a complete GGUF file.
        QuantizeError: bad type, a low-bit source without allow_requantize, DST exists,
            llama-cpp-python missing, or llama.cpp failed.
    """
    target = target.upper()
    src_path, dst_path = Path(src), Path(dst)
    info = read_gguf_info(src_path)
    ftype = check_target(info, target, allow_requantize=allow_requantize, source=src_path)
    if dst_path.exists() and not force:
        raise QuantizeError(f"{dst_path} already exists; remove it or pass --force")
    if dst_path.resolve() == src_path.resolve():
        raise QuantizeError("the output must be a different file from the source")

    try:
        import llama_cpp  # heavy native library: only loaded when actually quantizing
    except ImportError as e:
        raise QuantizeError(
            f"llama-cpp-python is not installed for {sys.executable} ({e}); "
            "build it with scripts/build_llama_cpp.sh or `make setup`"
        ) from None

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads if threads > 0 else (os.cpu_count() or 1)
    # llama.cpp refuses any quantized source tensor (Q8_0 included) without this flag.
    params.allow_requantize = allow_requantize or info.quantization not in ("F32", "F16", "BF16")

    partial = dst_path.with_name(f".{dst_path.name}.partial")
    print(
        f"Quantizing {src_path} ({info.quantization}, {format_size(info.size_bytes)}) "
        f"to {target} with {params.nthread} threads...",
        flush=True,
    )
    started = time.monotonic()
    llama_cpp.llama_backend_init()
    try:
        status = llama_cpp.llama_model_quantize(
            os.fsencode(src_path), os.fsencode(partial), ctypes.byref(params)
        )
        if status != 0:
            raise QuantizeError(
                f"llama.cpp could not quantize {src_path} to {target} (status {status}); "
                "its messages above say why"
            )
        os.replace(partial, dst_path)
    finally:
        partial.unlink(missing_ok=True)

    out = read_gguf_info(dst_path)
    ratio = out.size_bytes / info.size_bytes
    print(
        f"Wrote {dst_path} ({out.quantization}, {format_size(out.size_bytes)}, "
        f"{ratio:.0%} of the source) in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return dst_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tschat.ops.quantize",
        description="Re-quantize a GGUF model with llama.cpp's quantizer.",
        epilog=f"Types: {_types_list()}.",
    )
    parser.add_argument("src", help="source GGUF (F32, F16, BF16 or Q8_0)")
    parser.add_argument("dst", help="output GGUF (written only when complete)")
    parser.add_argument("type", help="target type, e.g. Q4_K_M, Q5_K_M, Q8_0")
    parser.add_argument(
        "--threads", type=int, default=0, help="quantizer threads (default: all cores)"
    )
    parser.add_argument(
        "--allow-requantize",
        action="store_true",
        help="accept a source that is already quantized below Q8_0",
    )
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    args = parser.parse_args(argv)
    try:
        quantize(
            args.src,
            args.dst,
            args.type,
            threads=args.threads,
            allow_requantize=args.allow_requantize,
            force=args.force,
        )
    except (NotGGUFError, QuantizeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
