# The CMake flags of every llama.cpp build here, declared once.  Sourced (not run) by
# build_llama_cpp.sh (the llama-cpp-python wheel) and build_llama_server.sh (the llama-server
# the benchmark measures against), so both are compiled alike and cached under the same key.
#
#   llama_cmake_args BACKEND   sets LLAMA_CMAKE_ARGS and LLAMA_FLAGS_ID; fails on an unknown backend
#   llama_cache_root NAME      prints ${XDG_CACHE_HOME:-~/.cache}/tschat/NAME
#   llama_cores                prints the number of CPU cores to build with

llama_cmake_args() {
  # The CPU build is portable: a native build picks up the AMX path in ggml-cpu, which crashes on
  # some CPUs.
  local portable="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_RPC=ON"
  case "$1" in
    cpu) LLAMA_CMAKE_ARGS="$portable" ;;
    cuda) LLAMA_CMAKE_ARGS="$portable -DGGML_CUDA=on" ;;
    metal) LLAMA_CMAKE_ARGS="-DGGML_METAL=on -DGGML_RPC=ON" ;;
    *) echo "unknown backend: $1 (cpu, cuda or metal)" >&2; return 2 ;;
  esac
  LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS ${LLAMA_EXTRA_CMAKE_ARGS:-}"
  LLAMA_FLAGS_ID=$(llama_hash "$LLAMA_CMAKE_ARGS")
}

llama_hash() {
  # sha256sum is a GNU tool; macOS has shasum.
  if command -v sha256sum >/dev/null 2>&1; then
    printf '%s' "$1" | sha256sum | cut -c1-12
  else
    printf '%s' "$1" | shasum -a 256 | cut -c1-12
  fi
}

llama_cache_root() {
  printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/tschat/$1"
}

llama_cores() {
  nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2
}
