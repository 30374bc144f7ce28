#!/usr/bin/env python3
"""Start llama.cpp's RPC server, so another machine's handler can offload model layers here.

It runs ``ggml_backend_rpc_start_server`` from the ggml libraries that llama-cpp-python ships
(built by scripts/build_llama_cpp.sh with -DGGML_RPC=ON), so server and client always come
from the same llama.cpp source and speak the same RPC protocol version.

    python scripts/rpc_server.py --port 50052 [--host 127.0.0.1] [--threads 1] [--device CPU]

The RPC protocol has no authentication and no encryption: anyone who can reach the port can
run computations and read or write the tensors it holds. It binds to 127.0.0.1 by default;
bind to another address only on a private network you trust (or behind an SSH tunnel).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path


def ggml_libraries() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """libggml and libggml-rpc from the installed llama_cpp package."""
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(libdir / "libggml.so"))
    rpc_path = libdir / "libggml-rpc.so"
    if not rpc_path.exists():
        sys.exit(
            "llama-cpp-python was built without the RPC backend: rebuild it with "
            "LLAMA_EXTRA_CMAKE_ARGS=-DGGML_RPC=ON scripts/build_llama_cpp.sh"
        )
    return ggml, ctypes.CDLL(str(rpc_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for computations")
    parser.add_argument("--device", default=None, help="ggml device name (default: first)")
    parser.add_argument("--cache-dir", default=None, help="keep received tensors here (optional)")
    args = parser.parse_args(argv)

    ggml, rpc = ggml_libraries()
    import llama_cpp

    llama_cpp.llama_backend_init()
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_name.restype = ctypes.c_char_p
    ggml.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    devices = [ggml.ggml_backend_dev_get(i) for i in range(ggml.ggml_backend_dev_count())]
    names = [ggml.ggml_backend_dev_name(d).decode() for d in devices]
    if args.device is not None:
        if args.device not in names:
            sys.exit(f"no device {args.device!r}; this build has {', '.join(names)}")
        chosen = devices[names.index(args.device)]
    else:
        chosen = devices[0]
    rpc.ggml_backend_rpc_start_server.restype = None
    rpc.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    endpoint = f"{args.host}:{args.port}"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the RPC server on {endpoint} has no authentication", file=sys.stderr)
    print(
        f"RPC server on {endpoint}, device {ggml.ggml_backend_dev_name(chosen).decode()}",
        flush=True,
    )
    cache = os.fsencode(args.cache_dir) if args.cache_dir else None
    chosen_array = (ctypes.c_void_p * 1)(chosen)
    rpc.ggml_backend_rpc_start_server(endpoint.encode(), cache, args.threads, 1, chosen_array)
    return 0


if __name__ == "__main__":
    sys.exit(main())
