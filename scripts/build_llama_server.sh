#!/usr/bin/env bash
# Build (once) llama-server from the llama.cpp that the pinned llama-cpp-python ships, with the
# same CMake flags as our wheel, for the benchmark to measure against.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--python PYTHON] [--backend cpu|cuda|metal] [--version VERSION] [--path]

Downloads the llama-cpp-python VERSION source package from PyPI, builds the llama-server of the
llama.cpp inside it with the flags of build_llama_cpp.sh (no curl, no HTTPS, no web UI), and keeps
it under \${LLAMA_SERVER_CACHE:-~/.cache/tschat/bin}/llama-server-VERSION-BACKEND-FLAGS/, so later
runs skip the build (about 10 minutes on 2 cores).

  --python   interpreter whose pip downloads the source (default: python3)
  --backend  cpu (portable AVX2 build, default), cuda or metal, as for the wheel
  --version  llama-cpp-python version (default: 0.3.36)
  --path     print where the binary is (or would be) and exit: 0 when built, 1 when not
  Extra CMake flags can be appended with LLAMA_EXTRA_CMAKE_ARGS, as for the wheel.
USAGE
}

python=python3
backend=${LLAMA_BACKEND:-cpu}
version=${LLAMA_CPP_VERSION:-0.3.36}
only_path=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; python=$2; shift 2 ;;
    --backend) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; backend=$2; shift 2 ;;
    --version) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; version=$2; shift 2 ;;
    --path) only_path=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# shellcheck source=llama_cpp_flags.sh
source "$(dirname "${BASH_SOURCE[0]}")/llama_cpp_flags.sh"
llama_cmake_args "$backend" || exit 2
# What the wheel's own CMakeLists adds (shared libraries, no curl), and what a server alone needs:
# no HTTPS (the peer listens on loopback only) and no web UI (it would be downloaded).
server_args="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF"
server_args+=" -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF"
server_args+=" -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON"
# The binary finds its libraries next to itself, wherever the folder is.
rpath_args=(-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "-DCMAKE_INSTALL_RPATH=\$ORIGIN")
cache_root=${LLAMA_SERVER_CACHE:-$(llama_cache_root bin)}
# Named like the wheel's folder: the same flags give the same FLAGS part.
bin_dir="$cache_root/llama-server-$version-$backend-$LLAMA_FLAGS_ID-$(llama_hash "$server_args")"
binary="$bin_dir/llama-server"

if [[ $only_path -eq 1 ]]; then
  echo "$binary"
  [[ -x $binary ]]
  exit
fi
if [[ -x $binary ]]; then
  echo "llama-server $version ($backend) is built: $binary"
  exit 0
fi
command -v cmake >/dev/null 2>&1 || { echo "llama-server needs cmake: apt-get install cmake" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "Building llama-server from llama-cpp-python $version for $backend (about 10 minutes on 2 cores; done once)..."
echo "  CMake flags: $LLAMA_CMAKE_ARGS $server_args"
"$python" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
source_dir="$work/llama_cpp_python-$version/vendor/llama.cpp"
[[ -f $source_dir/CMakeLists.txt ]] || { echo "no llama.cpp source in the llama-cpp-python $version package" >&2; exit 1; }
# shellcheck disable=SC2086 # the flags are words
cmake -S "$source_dir" -B "$work/build" $LLAMA_CMAKE_ARGS $server_args "${rpath_args[@]}" >"$work/configure.log" \
  || { cat "$work/configure.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server --parallel "$(llama_cores)"

rm -rf "$bin_dir.tmp"  # a copy cut short leaves it behind
mkdir -p "$bin_dir.tmp"
cp -a "$work/build/bin/." "$bin_dir.tmp/"
printf '%s\n' "$LLAMA_CMAKE_ARGS $server_args" >"$bin_dir.tmp/CMAKE_ARGS"
"$bin_dir.tmp/llama-server" --version >/dev/null 2>&1 || { echo "the built llama-server does not start" >&2; exit 1; }
rm -rf "$bin_dir"
mv "$bin_dir.tmp" "$bin_dir"
echo "llama-server $version ($backend) built: $binary"
