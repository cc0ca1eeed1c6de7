#!/usr/bin/env bash
# The prepared GPU check: every GPU figure the README still lacks, in one script, on random-weights models
# (no weights travel). Each step runs with its own time limit, so a slow or failing step cannot take the
# later ones with it; a step whose package is missing is skipped, saying which package.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--only STEP,...] [OUT]   (OUT: results/gpu-check)
#
# Steps (names for --only; a prefix such as "attention" or "max-context" selects several):
#   tests                  the CUDA tests of the S2 kernels (flex_attention and group-by-group S2, with and
#                          without sinks, against the slow reference, forward and gradients)
#   attention-rows         S2 kernels vs full attention, forward+backward, one document per row
#                          (benchmarks/attention.py; cuda: Llama-3.1-8B's heads 32/8 x 128, 16k, 32k, 64k)
#   attention-packed       the same on packed rows, three document-length mixes (cuda: 16k and 64k)
#   train-step             one LoRA+ S2 training step of random Llama-3.1-8B at 16k (benchmarks/train_step.py):
#                          chunked loss, Liger's fused loss, Liger + --offload-activations, and each of
#                          chunked / Liger + offload with --tiled-mlp
#   max-context-lora-plus  the longest LoRA+ context under an 80 GB cap (benchmarks/max_context.py, with
#   max-context-qlora      offloaded checkpoints and tiled MLPs) and the same with QLoRA; the anchor is
#                          unsloth's 342,733 tokens for QLoRA, so the search starts at 344,064 (336k)
#
# Output in OUT (at most 7 files, as a device machine returns them): gpu-check.json (each step: ran, failed,
# timed out or skipped and why; seconds; the machine, package versions and provenance), gpu-check.log (every
# step's output), attention-rows.json, attention-packed.json, train-step.json (every variant's results),
# max-context-lora-plus.json, max-context-qlora.json. The exit status is 1 when a step that ran failed.
#
# --device cpu --quick proves the code paths on a CPU in about a minute (tiny lengths, a tiny random Llama,
# a 1 GB budget; the CUDA-only steps and variants are skipped with their reason); CI runs it
# (tests/test_gpu_check.py). --device cuda --quick is a short first look at 16k on a GPU.
#
# Time on one H200 (estimates, not yet run): tests ~2 min, attention ~2-3 min, train-step ~2-3 min, each
# max-context step ~3-4 min (16 GB of random weights drawn once under WORK, then one 344k trial). Where one
# command may run at most 10 minutes, run it as two commands:
#   bash benchmarks/gpu_check.sh --device cuda --only tests,attention,train-step results/gpu-check-h200
#   bash benchmarks/gpu_check.sh --device cuda --only max-context results/gpu-check-h200
#
# On a machine with the working tree but no .git and no package index (the project's device machine):
#   * provenance: the results record LONGLORA_SOURCE_COMMIT as their commit; put the commit's sha in the
#     command: LONGLORA_SOURCE_COMMIT=<sha> bash benchmarks/gpu_check.sh --device cuda ...
#   * packages: torch, transformers, peft, accelerate, safetensors, numpy, psutil and pytest are there;
#     carry what `pip show` there lacks as wheels for its Python (3.12), here in the repository root:
#       echo /.whl/ >> .git/info/exclude
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl liger-kernel \
#         hjson pydantic pydantic-core annotated-types typing-inspection bitsandbytes==0.50.2
#       pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8     # PyPI has only its sdist
#     bitsandbytes' wheel holds a library per CUDA version (over 60 MB); keep only the one torch there uses
#     (cu130 on the H200 image) so the carry stays under 64 MiB:
#       zip -q -d .whl/bitsandbytes-*.whl '*cuda11*' '*cuda12*' '*cuda132*' '*rocm*' '*xpu*'
#     If transformers or peft there differ from requirements.txt's pins, carry those wheels too. Then, carrying
#     .whl, start the command with:
#       python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
#   * WORK (default /tmp/longlora-gpu-check) holds the random weights (16 GB for Llama-3.1-8B): keep it out
#     of OUT, whose files travel back.
set -u
DEVICE=cuda QUICK=0 ONLY="" OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:-}; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --only) ONLY=${2:-}; shift 2 ;;
    --only=*) ONLY=${1#*=}; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "error: one OUT folder, got $OUT and $1" >&2; exit 2; }; OUT=$1; shift ;;
  esac
done
case "$DEVICE" in
  cuda|cpu) ;;
  *) echo "error: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
if [ "$DEVICE" = cpu ] && [ "$QUICK" = 0 ]; then
  echo "error: on a CPU the check is only the --quick smoke run of its code paths; add --quick" >&2
  exit 2
fi
OUT=${OUT:-results/gpu-check}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=${WORK:-${TMPDIR:-/tmp}/longlora-gpu-check}
LOG=$OUT/gpu-check.log
STEPS=$WORK/steps.tsv
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu-check.log
cd "$ROOT" || exit 2
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if ! git rev-parse HEAD >/dev/null 2>&1 && [ -z "${LONGLORA_SOURCE_COMMIT:-}" ]; then
  echo "warning: no git checkout here and LONGLORA_SOURCE_COMMIT is unset: results will record no commit" | tee -a "$LOG"
fi

wanted() {  # is step $1 selected by --only (a comma-separated list of names or name prefixes)?
  [ -z "$ONLY" ] && return 0
  local item
  for item in ${ONLY//,/ }; do
    case "$1" in "$item"*) return 0 ;; esac
  done
  return 1
}

record() {  # name status seconds detail
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STEPS"
}

skip() {  # name reason
  wanted "$1" || return 0
  echo "=== $1: skipped: $2" | tee -a "$LOG"
  record "$1" skipped 0 "$2"
}

has() {  # is the Python package importable here?
  "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)" "$1"
}

step() {  # name time-limit-seconds (0: none) command...
  local name=$1 limit=$2
  shift 2
  wanted "$name" || return 0
  local shown="limit ${limit} s"
  [ "$limit" = 0 ] && shown="no time limit"
  echo "=== $name ($shown): $*" | tee -a "$LOG"
  local t0=$SECONDS rc
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local status=ran detail=""
  if [ "$limit" != 0 ] && [ "$rc" = 124 ]; then
    status=timed-out detail="stopped at the ${limit} s limit"
  elif [ "$rc" -gt 128 ]; then
    status=failed detail="killed by signal $((rc - 128)) (9: SIGKILL, e.g. out of memory)"
  elif [ "$rc" != 0 ]; then
    status=failed detail="exit status $rc"
  fi
  echo "=== $name: $status after $((SECONDS - t0)) s${detail:+ ($detail)}" | tee -a "$LOG"
  record "$name" "$status" "$((SECONDS - t0))" "$detail"
}

# ---------------------------------------------------------------------------------------------- settings
BOOK=data/books/dev/austen-emma.txt
TRAIN_COMMON=(--methods lora+ --attentions s2 --data book --book "$BOOK" --workdir "$WORK")
if [ "$DEVICE" = cuda ]; then
  HEADS=(--heads 32 --kv-heads 8 --head-dim 128)  # Llama-3.1-8B's attention shape
  if [ "$QUICK" = 1 ]; then
    ROW_LENS=(16384) PACKED_LENS=(16384) REPEATS=2 MAX_START=131072 MAX_LIMIT=131072
  else
    ROW_LENS=(16384 32768 65536) PACKED_LENS=(16384 65536) REPEATS=5 MAX_START=344064 MAX_LIMIT=393216
  fi
  ATT_ROWS=(--device cuda --dtypes bf16 "${HEADS[@]}" --repeats "$REPEATS" --seq-lens "${ROW_LENS[@]}"
    --impls s2 s2-flex s2-sink s2-sink-flex full)
  ATT_PACKED=(--packed --device cuda --dtypes bf16 "${HEADS[@]}" --repeats "$REPEATS" --seq-lens "${PACKED_LENS[@]}")
  TRAIN=(--device cuda --config-json llama-3.1-8b --lengths 16384 --steps 2 --warmup 1 "${TRAIN_COMMON[@]}")
  MAX=(--device cuda --config-json llama-3.1-8b --budget-gb 80 --start "$MAX_START" --granularity 16384
    --max-length "$MAX_LIMIT" --offload-activations --tiled-mlp --tokenizer bytes --timeout 300 --workdir "$WORK")
  LIMIT_TESTS=200 LIMIT_ATT=240 LIMIT_TRAIN=150 LIMIT_MAX=330
else
  ATT_ROWS=(--device cpu --dtypes fp32 --repeats 1 --seq-lens 512 --impls s2 full)
  ATT_PACKED=(--packed --device cpu --dtypes fp32 --repeats 1 --seq-lens 1024)
  TRAIN=(--device cpu --quick --config-json quick --steps 1 --warmup 0 "${TRAIN_COMMON[@]}")
  MAX=(--device cpu --quick --max-length 1024 --tiled-mlp --workdir "$WORK")
  # no limits on a CPU (timeout 0): a shared machine can stretch seconds of work to many minutes
  LIMIT_TESTS=0 LIMIT_ATT=0 LIMIT_TRAIN=0 LIMIT_MAX=0
fi

# ---------------------------------------------------------------------------------------------- steps
if [ "$DEVICE" = cuda ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
  step tests "$LIMIT_TESTS" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_s2flex.py tests/test_s2attn_packed.py tests/test_s2sink.py -k cuda
else
  skip tests "the CUDA tests of the S2 kernels need a GPU"
fi
step attention-rows "$LIMIT_ATT" "$PY" benchmarks/attention.py "${ATT_ROWS[@]}" --output "$OUT/attention-rows.json"
step attention-packed "$LIMIT_ATT" "$PY" benchmarks/attention.py "${ATT_PACKED[@]}" --output "$OUT/attention-packed.json"

train_variant() {  # name needs-cuda needs-liger needs-deepspeed train_step flags...
  local name=$1 cuda=$2 liger=$3 ds=$4
  shift 4
  if [ "$cuda" = 1 ] && [ "$DEVICE" != cuda ]; then
    skip "train-step-$name" "Liger's fused loss and activation offloading run on CUDA only"
  elif [ "$liger" = 1 ] && ! has liger_kernel; then
    skip "train-step-$name" "needs liger-kernel (carry its wheel; see the header)"
  elif [ "$ds" = 1 ] && ! has deepspeed; then
    skip "train-step-$name" "--tiled-mlp needs deepspeed (carry its wheel; see the header)"
  else
    step "train-step-$name" "$LIMIT_TRAIN" "$PY" benchmarks/train_step.py "${TRAIN[@]}" "$@" \
      --output "$WORK/train-step-$name.json"
  fi
}
wanted train-step && rm -f "$WORK"/train-step-*.json
train_variant chunked 0 0 0 --loss-backend chunked
train_variant chunked-tiled 0 0 1 --loss-backend chunked --tiled-mlp
train_variant liger 1 1 0 --loss-backend liger
train_variant liger-offload 1 1 0 --loss-backend liger --offload-activations
train_variant liger-offload-tiled 1 1 1 --loss-backend liger --offload-activations --tiled-mlp

if ! has deepspeed; then
  skip max-context-lora-plus "--tiled-mlp needs deepspeed (carry its wheel; see the header)"
else
  step max-context-lora-plus "$LIMIT_MAX" "$PY" benchmarks/max_context.py "${MAX[@]}" --method lora+ \
    --output "$OUT/max-context-lora-plus.json"
fi
if [ "$DEVICE" != cuda ]; then
  skip max-context-qlora "the QLoRA figure is a GPU measurement (bitsandbytes 4-bit on CUDA under an 80 GB cap)"
elif ! has bitsandbytes || ! has deepspeed; then
  skip max-context-qlora "needs bitsandbytes and deepspeed (carry their wheels; see the header)"
else
  step max-context-qlora "$LIMIT_MAX" "$PY" benchmarks/max_context.py "${MAX[@]}" --method qlora \
    --output "$OUT/max-context-qlora.json"
fi

# ---------------------------------------------------------------------------------------------- summary
"$PY" - "$OUT" "$STEPS" "$WORK" "$DEVICE" "$QUICK" "$ONLY" <<'PY'
import importlib.metadata as md
import json
import sys
from pathlib import Path

from longlora.provenance import run_record

out, steps_file, work, device, quick, only = sys.argv[1:]
out, work = Path(out), Path(work)
steps = []
for line in Path(steps_file).read_text().splitlines():
    name, status, seconds, detail = line.split("\t")
    steps.append({"name": name, "status": status, "seconds": int(seconds), "detail": detail or None})
this_run = [s["name"] for s in steps]
earlier = out / "gpu-check.json"
if only and earlier.is_file():  # a run of some steps (--only) keeps the other steps of an earlier run
    kept = [s for s in json.loads(earlier.read_text())["steps"] if s["name"] not in this_run]
    steps = kept + steps
versions = {}
for name in ("torch", "transformers", "peft", "accelerate", "deepspeed", "liger-kernel", "bitsandbytes",
             "flash-attn", "triton"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
argv = ["benchmarks/gpu_check.sh", "--device", device] + (["--quick"] if quick == "1" else [])
argv += (["--only", only] if only else []) + [str(out)]
summary = {"device": device, "quick": quick == "1", "steps": steps, "packages": versions,
           "provenance": run_record(argv)}
summary["provenance"]["command"] = "bash " + " ".join(argv)
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
variants = sorted(work.glob("train-step-*.json"))
if variants:  # every training-step variant in one file, each with its own provenance
    merged = {p.stem.removeprefix("train-step-"): json.loads(p.read_text()) for p in variants}
    (out / "train-step.json").write_text(json.dumps({"variants": merged}, indent=2) + "\n")
for s in steps:
    if s["name"] not in this_run:
        continue
    print(f"{s['name']:<28} {s['status']:<9} {s['seconds']:>5} s  {s['detail'] or ''}")
sys.exit(1 if any(s["status"] in ("failed", "timed-out") for s in steps if s["name"] in this_run) else 0)
PY
