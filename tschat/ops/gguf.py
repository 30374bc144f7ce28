"""Read a GGUF file's header without loading the model.

`read_gguf_info` checks that a file is a complete GGUF model and summarises what matters for
serving it: architecture, quantization, context length, chat template.  It reads the header
only (a few MiB at most), without llama.cpp, and is quick for any model size; it reads from any
seekable stream, such as a member of a model archive.  The type tables come from the ``gguf``
package (llama.cpp's gguf-py), so the reader knows every type that package knows.

GGUF layout (little-endian; a big-endian file is recognised by its version field)::

    "GGUF" | u32 version | N tensor_count | N kv_count        N = u64 since v2, u32 in v1
    kv_count x      str key | u32 value_type | value
    tensor_count x  str name | u32 n_dims | N dims[n_dims] | u32 ggml_type | u64 offset
    padding to general.alignment (default 32), then the tensor data at those offsets

A str is an N length followed by UTF-8 bytes; an array is a u32 item type, an N count and
the items (which may be strings or arrays themselves).

Command line::

    python -m tschat.ops.gguf check MODEL.gguf    # one-line summary; exit status 1 if not GGUF
    python -m tschat.ops.gguf info MODEL.gguf     # the summary as JSON
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import BinaryIO

import gguf

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (1, 2, 3)
DEFAULT_ALIGNMENT = 32

# llama_ftype (general.file_type) -> name, as llama.cpp's llama-quantize spells the types;
# from the gguf package (gguf-py, llama.cpp's own Python library), which knows the newest types.
FILE_TYPES: dict[int, str] = {
    ftype.value: ftype.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    for ftype in gguf.LlamaFileType
    if ftype is not gguf.LlamaFileType.GUESSED
}
_FILE_TYPE_GUESSED = gguf.LlamaFileType.GUESSED.value  # ORed in when llama.cpp guessed the type

# ggml_type -> (name, elements per block, bytes per block); used to check the data is all there.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    qtype.value: (qtype.name, *gguf.GGML_QUANT_SIZES[qtype])
    for qtype in gguf.GGMLQuantizationType
    if qtype in gguf.GGML_QUANT_SIZES
}

# GGUF value types, and the struct format of each scalar one.
_STRING = gguf.GGUFValueType.STRING.value
_ARRAY = gguf.GGUFValueType.ARRAY.value
_SCALAR_FORMATS: dict[int, str] = {
    vtype.value: fmt
    for vtype, fmt in (
        (gguf.GGUFValueType.UINT8, "B"),
        (gguf.GGUFValueType.INT8, "b"),
        (gguf.GGUFValueType.UINT16, "H"),
        (gguf.GGUFValueType.INT16, "h"),
        (gguf.GGUFValueType.UINT32, "I"),
        (gguf.GGUFValueType.INT32, "i"),
        (gguf.GGUFValueType.FLOAT32, "f"),
        (gguf.GGUFValueType.BOOL, "?"),
        (gguf.GGUFValueType.UINT64, "Q"),
        (gguf.GGUFValueType.INT64, "q"),
        (gguf.GGUFValueType.FLOAT64, "d"),
    )
}
_CHUNK = 1 << 20
_MAX_DIMS = 8  # ggml uses 4; anything far above is a corrupt header
_MAX_NESTING = 8  # arrays of arrays of ...; real files nest at most once


class NotGGUFError(ValueError):
    """The file is not a complete GGUF model file; the message says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path} is not a usable GGUF model file: {reason}")


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says about a model."""

    version: int
    architecture: str | None
    name: str | None
    file_type: int | None  # general.file_type (llama_ftype), None when the file has none
    quantization: str  # "Q4_1", "F16", ...: from file_type, else the commonest weight type
    context_length: int | None  # the context the model was trained for
    has_chat_template: bool
    tensor_count: int
    kv_count: int
    size_bytes: int
    tensor_types: tuple[tuple[str, int], ...]  # (ggml type, tensor count), commonest first


@dataclass(frozen=True)
class _Array:
    """Stands for an array value, which is skipped rather than read."""

    item_type: int


class _Truncated(Exception):
    """The file ended inside the header."""


class _Invalid(Exception):
    """Anything else wrong; the message is the reason shown to the user."""


class _Reader:
    """Sequential reader over a file with its own buffer: the header has ~10^5 tiny fields."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size
        self._buf = b""
        self._pos = 0  # position in _buf
        self._base = 0  # file offset of _buf[0]
        self.endian = "<"
        self.count_format = "Q"  # u64 lengths and counts; u32 in GGUF v1

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _need(self, n: int) -> None:
        if self._pos + n <= len(self._buf):
            return
        if self.offset + n > self._size:
            raise _Truncated
        rest = self._buf[self._pos :]
        more = self._f.read(max(n - len(rest), _CHUNK))
        self._base += self._pos
        self._buf = rest + more
        self._pos = 0
        if len(self._buf) < n:
            raise _Truncated

    def read(self, n: int) -> bytes:
        self._need(n)
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def skip(self, n: int) -> None:
        if self.offset + n > self._size:
            raise _Truncated
        if self._pos + n <= len(self._buf):
            self._pos += n
            return
        target = self.offset + n
        self._f.seek(target)
        self._base, self._buf, self._pos = target, b"", 0

    def unpack(self, fmt: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(self.endian + fmt, self._buf, self._pos)
        self._pos += size
        return value  # type: ignore[no-any-return]

    def u32(self) -> int:
        return int(self.unpack("I"))

    def count(self) -> int:
        return int(self.unpack(self.count_format))

    def _length(self, item_size: int, what: str) -> int:
        n = self.count()
        if n * item_size > self._size - self.offset:
            # A length beyond the end of the file: the file is cut short, or the field is garbage.
            if n * item_size > self._size:
                raise _Invalid(f"corrupt header: {what} of {n} items at byte {self.offset}")
            raise _Truncated
        return n

    def string(self) -> str:
        n = self._length(1, "a string")
        return self.read(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self._length(1, "a string"))

    def value(self, vtype: int, depth: int = 0) -> object:
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise _Invalid(f"corrupt header: arrays nested too deep at byte {self.offset}")
            item_type = self.u32()
            if item_type in _SCALAR_FORMATS:
                item_size = struct.calcsize(_SCALAR_FORMATS[item_type])
                self.skip(item_size * self._length(item_size, "an array"))
            elif item_type == _STRING:
                for _ in range(self._length(8, "an array")):
                    self.skip_string()
            elif item_type == _ARRAY:
                for _ in range(self._length(12, "an array")):
                    self.value(_ARRAY, depth + 1)
            else:
                raise _Invalid(
                    f"corrupt header: unknown array item type {item_type} at byte {self.offset - 4}"
                )
            return _Array(item_type)
        raise _Invalid(f"corrupt header: unknown value type {vtype} at byte {self.offset - 4}")


def quantization_name(file_type: int) -> str:
    """Name of a llama_ftype value (general.file_type).

    >>> quantization_name(3)
    'Q4_1'
    >>> quantization_name(1024 | 7)  # the 'guessed' flag is ignored
    'Q8_0'
    >>> quantization_name(99)
    'ftype 99'
    """
    plain = file_type & ~_FILE_TYPE_GUESSED
    return FILE_TYPES.get(plain, f"ftype {plain}")


def format_size(size_bytes: int) -> str:
    """Human-readable size in binary units.

    >>> format_size(98362432)
    '93.8 MiB'
    >>> format_size(512)
    '512 B'
    >>> format_size(3 * 1024**3)
    '3.00 GiB'
    """
    if size_bytes < 1024:
        return f"{size_bytes} B"
    if size_bytes < 1024**2:
        return f"{size_bytes / 1024:.1f} KiB"
    if size_bytes < 1024**3:
        return f"{size_bytes / 1024**2:.1f} MiB"
    return f"{size_bytes / 1024**3:.2f} GiB"


def _tensor_nbytes(ggml_type: int, dims: Sequence[int]) -> int | None:
    known = GGML_TYPES.get(ggml_type)
    if known is None:
        return None
    _, block, block_bytes = known
    elements = 1
    for d in dims:
        elements *= d
    return elements // block * block_bytes


def read_gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read and check the header of a GGUF file.

    Raises:
        NotGGUFError: wrong magic bytes, unsupported version, a header or tensor data that is
            cut short, or a header that cannot be parsed.
        OSError: the file cannot be opened or read.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        return read_gguf_stream(f, size, path)


def read_gguf_stream(f: BinaryIO, size: int, name: str | os.PathLike[str]) -> GGUFInfo:
    """Like :func:`read_gguf_info`, for an open seekable binary file of ``size`` bytes.

    Reads a GGUF without unpacking it, e.g. a member of a model archive opened with
    ``zipfile.ZipFile.open``; ``name`` is the file named in errors.
    """
    r = _Reader(f, size)
    try:
        return _parse(r, size)
    except _Truncated:
        raise NotGGUFError(
            name, f"the file is truncated: it ends at byte {size} inside the header"
        ) from None
    except _Invalid as e:
        raise NotGGUFError(name, str(e)) from None


def _parse(r: _Reader, size: int) -> GGUFInfo:
    if size == 0:
        raise _Invalid("the file is empty")
    head = r.read(min(size, 4))
    if head != MAGIC:
        # Never the bytes themselves: the file may be anything on the machine (a key, say).
        raise _Invalid("it is not a GGUF file: it does not start with the GGUF magic bytes")
    raw_version = r.read(4)
    version = struct.unpack("<I", raw_version)[0]
    if version not in SUPPORTED_VERSIONS:
        swapped = struct.unpack(">I", raw_version)[0]
        if swapped not in SUPPORTED_VERSIONS:
            raise _Invalid(f"unsupported GGUF version {version} (this reader knows 1 to 3)")
        version, r.endian = swapped, ">"
    if version == 1:
        r.count_format = "I"
    tensor_count = r.count()
    kv_count = r.count()

    meta: dict[str, object] = {}
    for _ in range(kv_count):
        key = r.string()
        vtype = r.u32()
        meta[key] = r.value(vtype)

    alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise _Invalid("corrupt header: general.alignment is not a positive whole number")

    types: collections.Counter[str] = collections.Counter()
    weight_types: collections.Counter[str] = collections.Counter()
    data_end: int | None = 0
    for _ in range(tensor_count):
        r.skip_string()  # tensor name
        n_dims = r.u32()
        if n_dims > _MAX_DIMS:
            raise _Invalid(
                f"corrupt header: a tensor with {n_dims} dimensions at byte {r.offset - 4}"
            )
        dims = [r.count() for _ in range(n_dims)]
        ggml_type = r.u32()
        offset = int(r.unpack("Q"))
        type_name = GGML_TYPES.get(ggml_type, (f"type {ggml_type}", 0, 0))[0]
        types[type_name] += 1
        if n_dims >= 2:
            weight_types[type_name] += 1
        nbytes = _tensor_nbytes(ggml_type, dims)
        if nbytes is None or data_end is None:
            data_end = None
        else:
            data_end = max(data_end, offset + nbytes)

    if data_end is not None and tensor_count:
        data_start = -(-r.offset // alignment) * alignment
        needed = data_start + data_end
        if needed > size:
            raise _Invalid(
                f"the file is truncated: its header describes {needed} bytes "
                f"but the file has {size}"
            )

    arch = meta.get("general.architecture")
    architecture = arch if isinstance(arch, str) else None
    name = meta.get("general.name")
    file_type = meta.get("general.file_type")
    if not isinstance(file_type, int) or isinstance(file_type, bool):
        file_type = None
    if file_type is not None:
        quantization = quantization_name(file_type)
    elif weight_types:
        quantization = weight_types.most_common(1)[0][0]
    else:
        quantization = "unknown"
    ctx = meta.get(f"{architecture}.context_length") if architecture else None
    template = meta.get("tokenizer.chat_template")
    return GGUFInfo(
        version=version,
        architecture=architecture,
        name=name if isinstance(name, str) else None,
        file_type=file_type,
        quantization=quantization,
        context_length=ctx if isinstance(ctx, int) and not isinstance(ctx, bool) else None,
        has_chat_template=isinstance(template, str) and bool(template.strip()),
        tensor_count=tensor_count,
        kv_count=kv_count,
        size_bytes=size,
        tensor_types=tuple(types.most_common()),
    )


def describe(info: GGUFInfo) -> str:
    """One line about a model, as `check` prints it."""
    parts = [f"GGUF v{info.version}", info.architecture or "unknown architecture"]
    if info.name:
        parts[-1] += f" ({info.name})"
    parts.append(info.quantization)
    if info.context_length:
        parts.append(f"trained context {info.context_length}")
    parts.append("chat template" if info.has_chat_template else "no chat template")
    parts.append(f"{info.tensor_count} tensors")
    parts.append(format_size(info.size_bytes))
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tschat.ops.gguf", description="Check or describe a GGUF model file."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check the file is a complete GGUF model; one line")
    check.add_argument("file")
    info_cmd = sub.add_parser("info", help="print what the header says, as JSON")
    info_cmd.add_argument("file")
    args = parser.parse_args(argv)

    try:
        info = read_gguf_info(args.file)
    except NotGGUFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot read {args.file}: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.command == "check":
        print(f"{args.file}: {describe(info)}")
    else:
        data = asdict(info)
        data["tensor_types"] = dict(info.tensor_types)
        print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
