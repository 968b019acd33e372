#!/usr/bin/env bash
# Runs N training processes on this machine as one multi-process JAX job.
#
# Each process gets its own share of the devices: on CPU, D forced host
# devices (XLA_FLAGS); on GPU, D GPUs (CUDA_VISIBLE_DEVICES). Process 0 is
# the coordinator on localhost:PORT. What tests/test_multihost.py does.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [options] -- TRAINING_ARGS...

Runs `python -m musegen_jax.main TRAINING_ARGS` as N processes on this
machine, joined through jax.distributed (coordinator localhost:PORT).

Options:
  --num_processes N        processes to start (default 2)
  --devices_per_process D  devices of each process (default 1): forced CPU
                           devices, or GPUs with --platform=gpu
  --platform cpu|gpu       default: gpu if nvidia-smi lists GPUs, else cpu
  --port P                 coordinator port (default 12355)
  --logdir DIR             per-process logs (default WORKDIR/logs, from the
                           training arguments' --workdir)
  --python PY              interpreter (default $PYTHON, else python3)
  --dry-run                print the commands, run nothing
  -h, --help               this help

Example:
  launch/local_multiprocess.sh --num_processes 2 --devices_per_process 2 -- \
      --config=configs/lstm.py:smoke --workdir=runs/smoke2
EOF
}

die() { echo "local_multiprocess.sh: error: $*" >&2; echo "Run with --help for usage." >&2; exit 2; }

num_processes=2
devices_per_process=1
platform=""
port=12355
logdir=""
python="${PYTHON:-python3}"
dry_run=0
train_args=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --num_processes|--devices_per_process|--platform|--port|--logdir|--python)
      (($# >= 2)) || die "$1 needs a value"
      declare "${1#--}=$2"; shift 2 ;;
    --num_processes=*|--devices_per_process=*|--platform=*|--port=*|--logdir=*|--python=*)
      name="${1%%=*}"; declare "${name#--}=${1#*=}"; shift ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (training arguments go after --)" ;;
  esac
done

[[ "$num_processes" =~ ^[1-9][0-9]*$ ]] || die "--num_processes must be a positive integer, got '$num_processes'"
[[ "$devices_per_process" =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer, got '$devices_per_process'"
[[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "--port must be in 1..65535, got '$port'"
((${#train_args[@]})) || die "no training arguments: give them after --, e.g. -- --config=configs/lstm.py:smoke --workdir=runs/x"

workdir=""
for ((i = 0; i < ${#train_args[@]}; i++)); do
  case "${train_args[$i]}" in
    --workdir=*) workdir="${train_args[$i]#--workdir=}" ;;
    --workdir) workdir="${train_args[$((i + 1))]:-}" ;;
  esac
done
[[ -n "$workdir" ]] || die "the training arguments need --workdir=DIR"

if [[ -z "$platform" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    platform=gpu
  else
    platform=cpu
  fi
fi
[[ "$platform" == cpu || "$platform" == gpu ]] || die "--platform must be cpu or gpu, got '$platform'"
logdir="${logdir:-$workdir/logs}"

# One shell word, single-quoted where it needs quoting.
shquote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# A command as one shell line.
shline() {
  local word line=""
  for word in "$@"; do line+=" $(shquote "$word")"; done
  echo "${line# }"
}

# VAR=value lines of process $1's device share.
process_env() {
  local id=$1
  if [[ "$platform" == cpu ]]; then
    echo "JAX_PLATFORMS=cpu"
    echo "XLA_FLAGS=--xla_force_host_platform_device_count=$devices_per_process"
  else
    local first=$((id * devices_per_process)) ids=() d
    for ((d = first; d < first + devices_per_process; d++)); do ids+=("$d"); done
    echo "CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${ids[*]}")"
  fi
}

# Process $1's command, NUL-separated.
process_command() {
  local id=$1
  printf '%s\0' "$python" -m musegen_jax.main "${train_args[@]}" \
    "--coordinator_address=localhost:$port" "--num_processes=$num_processes" \
    "--process_id=$id"
}

if ((dry_run)); then
  echo "mkdir -p $(shquote "$logdir")"
  for ((id = 0; id < num_processes; id++)); do
    mapfile -t envs < <(process_env "$id")
    mapfile -d '' -t cmd < <(process_command "$id")
    echo "$(shline env "${envs[@]}" "${cmd[@]}") > $(shquote "$logdir/process_$id.log") 2>&1 &"
  done
  echo "wait"
  exit 0
fi

mkdir -p "$logdir"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM
for ((id = 0; id < num_processes; id++)); do
  mapfile -t envs < <(process_env "$id")
  mapfile -d '' -t cmd < <(process_command "$id")
  env "${envs[@]}" "${cmd[@]}" >"$logdir/process_$id.log" 2>&1 &
  pids+=($!)
  echo "process $id (pid $!): log $logdir/process_$id.log"
done
# Process 0's log on the console while the job runs.
tail -n +1 -f --pid="${pids[0]}" "$logdir/process_0.log" &
tail_pid=$!

# The first process to fail stops the others (they would wait for it).
status=0
declare -A process_of
for ((id = 0; id < num_processes; id++)); do process_of[${pids[$id]}]=$id; done
running=("${pids[@]}")
while ((${#running[@]})); do
  code=0
  wait -n -p finished "${running[@]}" || code=$?
  id=${process_of[$finished]}
  still=()
  for pid in "${running[@]}"; do [[ "$pid" == "$finished" ]] || still+=("$pid"); done
  running=("${still[@]}")
  if ((code)); then
    echo "local_multiprocess.sh: process $id exited with status $code;" \
      "see $logdir/process_$id.log" >&2
    ((status)) || status=$code
    cleanup
  fi
done
wait "$tail_pid" 2>/dev/null || true
exit "$status"
