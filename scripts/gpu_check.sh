#!/usr/bin/env bash
# On a CUDA machine: build llama-cpp-python for this GPU's architecture only (cached), serve the
# default model fully offloaded, and print the benchmark's quick figures next to the CPU build's.
set -euo pipefail

usage() {
  cat <<USAGE
Usage: $(basename "$0") [--python PYTHON] [--arch SM] [--version VERSION] [--out-dir DIR]

Needs an NVIDIA GPU (nvidia-smi) and the CUDA toolkit (nvcc on PATH or in \$CUDA_HOME/bin), and
the project set up with 'make setup' (its .venv, the CPU wheel, TorchServe).

  1. builds the llama-cpp-python CUDA wheel for the local GPU's architecture only, with the
     wheel's CMake flags (scripts/llama_cpp_flags.sh) plus -DCMAKE_CUDA_ARCHITECTURES=SM, kept
     under ~/.cache/tschat/wheels like the CPU one (about 5 minutes on 16 cores, once);
  2. unpacks it beside the CPU build (~/.cache/tschat/gpu-site/...), without touching .venv;
  3. runs 'python -m benchmarks.run --quick --no-peer --scenarios distinct' twice, with the CPU
     build and with the CUDA one (PYTHONPATH puts it first, for the benchmark and TorchServe's
     worker alike; n_gpu_layers -1 offloads every layer), and prints both side by side.

  --python   the project's interpreter (default: .venv/bin/python)
  --arch     CUDA architecture, e.g. 90 (default: the first GPU's compute capability)
  --version  llama-cpp-python version (default: the installed one)
  --out-dir  where both runs' results go (default: benchmarks/results/gpu-check-TIME)
USAGE
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=$root/.venv/bin/python
arch=
version=
out_dir=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; python=$2; shift 2 ;;
    --arch) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; arch=$2; shift 2 ;;
    --version) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; version=$2; shift 2 ;;
    --out-dir) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; out_dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -n $arch && ! $arch =~ ^[0-9]+[a-z]?$ ]]; then
  echo "gpu_check: --arch takes a CUDA architecture such as 90 or 89, not '$arch'." >&2
  exit 2
fi

fail() { echo "gpu_check: $*" >&2; exit 1; }

# -- what this machine has ------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 \
  || fail "no NVIDIA GPU here: nvidia-smi is not installed. Run this on a machine with a CUDA GPU."
gpus=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null || true)
[[ -n $gpus ]] || fail "no NVIDIA GPU here: nvidia-smi lists none. Run this on a machine with a CUDA GPU."
nvcc=$(command -v nvcc 2>/dev/null || true)
if [[ -z $nvcc && -x ${CUDA_HOME:-/usr/local/cuda}/bin/nvcc ]]; then
  nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
fi
[[ -n $nvcc ]] || fail "the CUDA toolkit is missing: no nvcc on PATH or in \${CUDA_HOME:-/usr/local/cuda}/bin. Install it (e.g. apt-get install nvidia-cuda-toolkit) and retry."
export PATH="$(dirname "$nvcc"):$PATH"
[[ -x $python ]] || fail "no project interpreter at $python: run 'make setup' first (or pass --python)."
"$python" -c "import llama_cpp, tschat, ts" 2>/dev/null \
  || fail "$python lacks llama-cpp-python, tschat or TorchServe: run 'make setup' first."
if [[ -z $arch ]]; then
  cap=$(head -n1 <<<"$gpus" | awk -F', *' '{print $NF}')
  arch=${cap/./}
fi
version=${version:-$("$python" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))')}
out_dir=${out_dir:-$root/benchmarks/results/gpu-check-$(date +%Y%m%d-%H%M%S)}
echo "GPU: $(head -n1 <<<"$gpus") (architecture $arch); nvcc: $nvcc; llama-cpp-python $version"

# -- the CUDA build, for this architecture only -----------------------------------------------
started=$SECONDS
wheel=$(LLAMA_EXTRA_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$arch" \
  bash "$root/scripts/build_llama_cpp.sh" --python "$python" --backend cuda --version "$version" \
  --no-install | tail -n1)
[[ -f $wheel ]] || fail "the CUDA wheel was not built (see the output above)."
site=${XDG_CACHE_HOME:-$HOME/.cache}/tschat/gpu-site/$(basename "$(dirname "$wheel")")
if [[ ! -f $site/.complete ]]; then
  rm -rf "$site"
  "$python" -m pip install --quiet --no-deps --no-warn-conflicts --target "$site" "$wheel"
  touch "$site/.complete"
fi
# llama_supports_gpu_offload() is true for a CPU build with RPC too: the system info tells.
has_cuda="import llama_cpp, re; info = llama_cpp.llama_print_system_info().decode()
raise SystemExit(0 if re.search(r'\bCUDA\s*:', info) else 1)"
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" "$python" -c "$has_cuda" \
  || fail "the build in $site has no CUDA backend (see its CMAKE_ARGS), or the driver is not loaded."
echo "CUDA build ready in $((SECONDS - started)) s: $site"

# -- the quick figures, CPU then CUDA ---------------------------------------------------------
bench=(-m benchmarks.run --quick --no-peer --scenarios distinct)
cd "$root"
echo "== CPU build =="
"$python" "${bench[@]}" --out-dir "$out_dir/cpu"
echo "== CUDA build, every layer offloaded =="
PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" "$python" "${bench[@]}" --out-dir "$out_dir/cuda"
"$python" -m benchmarks.compare "$out_dir/cpu" "$out_dir/cuda" --labels cpu,cuda
echo "gpu_check: done in $((SECONDS - started)) s; results in $out_dir"
