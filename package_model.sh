#!/usr/bin/env bash
# Package a GGUF model, the llama.cpp handler and a filled-in model-config.yaml into a
# TorchServe model archive, OUTPUT_DIR/NAME.mar: a thin wrapper over the Python entry point
# `python -m tschat.ops.packaging`, which takes the same options (see --help).
#
# The only option handled here is --python, the interpreter to run it with (default:
# .venv/bin/python next to this script if present, else python3).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  echo "Usage: $(basename "$0") [--python PYTHON] [options] [MODEL.gguf]  (--help for all options)"
}

die() {
  echo "error: $*" >&2
  exit 1
}

if [[ -x "$script_dir/.venv/bin/python" ]]; then
  python="$script_dir/.venv/bin/python"
else
  python=python3
fi

args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python)
      [[ $# -ge 2 && -n $2 ]] || { usage >&2; die "--python needs a value (see --help)"; }
      python=$2
      shift 2
      ;;
    --python=*) python=${1#*=}; shift ;;
    --) args+=("$@"); break ;;
    *) args+=("$1"); shift ;;
  esac
done

command -v "$python" >/dev/null 2>&1 || die "Python interpreter '$python' not found (set --python)"
# tschat comes from this checkout.
export PYTHONPATH="$script_dir${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m tschat.ops.packaging ${args[@]+"${args[@]}"}
