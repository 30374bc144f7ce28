#!/usr/bin/env bash
# Build (once) and install llama-cpp-python for a chosen backend.
#
# pip's wheel cache ignores CMAKE_ARGS, so a wheel built with other flags would be reused
# silently.  We keep each built wheel in a folder named by version and backend flags instead.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--python PYTHON] [--backend cpu|cuda|metal] [--version VERSION] [--no-install]

Builds llama-cpp-python from source for the backend and installs it into PYTHON's environment.
The built wheel is kept under \${LLAMA_WHEEL_CACHE:-~/.cache/tschat/wheels}, so later runs skip the build.

  --python   interpreter to install into (default: python3)
  --backend  cpu (portable AVX2 build, default), cuda (-DGGML_CUDA=on) or metal (-DGGML_METAL=on)
  --version  llama-cpp-python version (default: 0.3.36)
  --no-install  build (or find) the wheel only, and print its path last
  Extra CMake flags can be appended with LLAMA_EXTRA_CMAKE_ARGS (for example -DGGML_RPC=ON).
USAGE
}

python=python3
backend=${LLAMA_BACKEND:-cpu}
version=${LLAMA_CPP_VERSION:-0.3.36}
install=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# shellcheck source=llama_cpp_flags.sh
source "$(dirname "${BASH_SOURCE[0]}")/llama_cpp_flags.sh"
llama_cmake_args "$backend" || exit 2
cmake_args=$LLAMA_CMAKE_ARGS
flags_id=$LLAMA_FLAGS_ID
cores=$(llama_cores)
cache_root=${LLAMA_WHEEL_CACHE:-$(llama_cache_root wheels)}
wheel_dir="$cache_root/llama-cpp-python-$version-$backend-$flags_id"

if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "Building llama-cpp-python $version for $backend (about 4 minutes on 2 cores; done once)..."
  echo "  CMAKE_ARGS=$cmake_args"
  rm -rf "$wheel_dir.tmp"  # a build cut short leaves it behind
  mkdir -p "$wheel_dir.tmp"
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$cores" \
    "$python" -m pip wheel --no-deps --no-binary llama-cpp-python --no-cache-dir \
    -w "$wheel_dir.tmp" "llama-cpp-python==$version"
  rm -rf "$wheel_dir"
  mv "$wheel_dir.tmp" "$wheel_dir"
  printf '%s\n' "$cmake_args" >"$wheel_dir/CMAKE_ARGS"
fi
if [[ $install -eq 0 ]]; then
  ls "$wheel_dir"/llama_cpp_python-*.whl
  exit 0
fi
"$python" -m pip install --quiet --no-warn-conflicts "$wheel_dir"/llama_cpp_python-*.whl
echo "llama-cpp-python $version ($backend) installed from $wheel_dir"
