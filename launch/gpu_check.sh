#!/usr/bin/env bash
# One accelerator check: every family's train step and sampler at the sizes of
# one accelerator chip, a JSON line each (step time, examples/s, MFU against
# the chip's bfloat16 peak, compile seconds, peak memory).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: launch/gpu_check.sh [--dry_run] [--steps N] [--python PY] [-- BENCH_FLAGS...]

Runs `python -m musegen_jax.bench --bench=accelerator` on this machine's
first accelerator:
  Transformer d 1024, 12 layers, 16 heads, sequence 1024, batch 16, bfloat16
  WaveGAN d 64, batch 64, 5 critic updates (configs/gan.py)
  LSTM 3 x 1024, bfloat16 (configs/lstm.py otherwise)
  BiGRU and VAE at their defaults (configs/bigru.py, configs/vae.py)
each with its sampling loop (config.sample). About 8 minutes on one H200.

Options:
  --dry_run    the smoke sizes, two steps: checks the script on any machine
               (a CPU included) in about a minute
  --steps N    timed train steps per job after warm-up (default 10)
  --python PY  interpreter (default $PYTHON, else python3)
  -h, --help   this help

Output: one JSON line per job on stdout; BUILD_NOTES.md records the figures.
USAGE
}

PYTHON_BIN="${PYTHON:-python3}"
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run|--dry-run) ARGS+=(--dry_run); shift ;;
    --steps) ARGS+=("--steps=$2"); shift 2 ;;
    --python) PYTHON_BIN="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; ARGS+=("$@"); break ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
exec "$PYTHON_BIN" -m musegen_jax.bench --bench=accelerator "${ARGS[@]}"
