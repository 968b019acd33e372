#!/usr/bin/env bash
# Trains on a Cloud TPU VM pod: create (or reuse) it, install this checkout on
# every worker, run the same command on all workers, and optionally delete it.
#
# Every worker runs `python3 -m musegen_jax.main --distributed=on ...`; JAX
# finds the coordinator, the process count and each worker's id from the TPU
# metadata, so no addresses are passed.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE [options] [-- TRAINING_ARGS...]

Creates the TPU VM NAME if `gcloud compute tpus tpu-vm describe` does not
find it, copies this checkout to every worker and `pip install`s it there,
then runs `python3 -m musegen_jax.main TRAINING_ARGS` on all workers
(`gcloud compute tpus tpu-vm ssh --worker=all`), streaming their output and
keeping each worker's log in REMOTE_DIR/logs/.

The workdir must be storage every worker sees (a bucket mounted with
gcsfuse, or NFS): only process 0 writes logs, and every process restores
the checkpoints.

Options:
  --name NAME                TPU VM name (required)
  --zone ZONE                e.g. us-central2-b (required)
  --project PROJECT          default: gcloud's configured project
  --accelerator_type TYPE    for creation, e.g. v4-32 (required to create)
  --version VERSION          TPU VM software (default tpu-ubuntu2204-base)
  --spot                     create a Spot TPU
  --remote_dir DIR           checkout location on the workers (default
                             musegen_jax, relative to the home directory)
  --jax_spec SPEC            pip requirement for JAX on TPU (default
                             "jax[tpu]")
  --skip_install             reuse what is already installed on the workers
  --delete                   delete the TPU VM afterwards (alone: delete now)
  --dry-run                  print every command, run nothing
  -h, --help                 this help

Example:
  launch/tpu_pod.sh --name musegen-v4 --zone us-central2-b \
      --accelerator_type v4-32 -- \
      --config=configs/lstm.py --workdir=/mnt/bucket/runs/lstm_v4
EOF
}

die() { echo "tpu_pod.sh: error: $*" >&2; echo "Run with --help for usage." >&2; exit 2; }

name=""
zone=""
project=""
accelerator_type=""
version="tpu-ubuntu2204-base"
spot=0
remote_dir="musegen_jax"
jax_spec="jax[tpu]"
skip_install=0
delete=0
dry_run=0
train_args=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --spot) spot=1; shift ;;
    --skip_install) skip_install=1; shift ;;
    --delete) delete=1; shift ;;
    --name|--zone|--project|--accelerator_type|--version|--remote_dir|--jax_spec)
      (($# >= 2)) || die "$1 needs a value"
      declare "${1#--}=$2"; shift 2 ;;
    --name=*|--zone=*|--project=*|--accelerator_type=*|--version=*|--remote_dir=*|--jax_spec=*)
      key="${1%%=*}"; declare "${key#--}=${1#*=}"; shift ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option '$1' (training arguments go after --)" ;;
  esac
done

[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required"
((${#train_args[@]} || delete)) || die "nothing to do: give training arguments after --, or --delete"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tpu=(compute tpus tpu-vm)
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

# One shell word, single-quoted where it needs quoting.
shquote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command (shell-quoted); runs it unless --dry-run.
run() {
  local word line="+"
  for word in "$@"; do line+=" $(shquote "$word")"; done
  echo "$line"
  ((dry_run)) || "$@"
}

if ((dry_run)); then
  command -v gcloud >/dev/null 2>&1 || echo "# (dry run: gcloud is not installed here)"
fi

if ((${#train_args[@]})); then
  if ((dry_run)); then
    run gcloud "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)'
    echo "# if describe fails (no such TPU VM):"
    create=(gcloud "${tpu[@]}" create "$name" "${where[@]}"
            --accelerator-type="${accelerator_type:-ACCELERATOR_TYPE}" --version="$version")
    ((spot)) && create+=(--spot)
    run "${create[@]}"
  else
    command -v gcloud >/dev/null 2>&1 || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
    if state=$(gcloud "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null); then
      echo "Reusing TPU VM $name (state $state)."
      [[ "$state" == READY ]] || die "TPU VM $name is $state, not READY; start it or pick another --name"
    else
      [[ -n "$accelerator_type" ]] || die "TPU VM $name does not exist in $zone; give --accelerator_type (e.g. v4-32) to create it"
      create=(gcloud "${tpu[@]}" create "$name" "${where[@]}"
              --accelerator-type="$accelerator_type" --version="$version")
      ((spot)) && create+=(--spot)
      run "${create[@]}"
    fi
  fi

  if ((! skip_install)); then
    # The checkout as git sees it (tracked and new files, no ignored outputs).
    archive="${TMPDIR:-/tmp}/musegen_jax_src.$$.tar.gz"
    if ((dry_run)); then
      echo "+ (cd $(printf '%q' "$repo_root") && git ls-files -co --exclude-standard -z | tar -czf $(printf '%q' "$archive") --null -T -)"
    else
      (cd "$repo_root" && git ls-files -co --exclude-standard -z | tar -czf "$archive" --null -T -)
      trap 'rm -f "$archive"' EXIT
    fi
    run gcloud "${tpu[@]}" scp "$archive" "$name:musegen_jax_src.tar.gz" "${where[@]}" --worker=all
    install="set -e; mkdir -p $remote_dir"
    install+=" && tar -xzf musegen_jax_src.tar.gz -C $remote_dir"
    install+=" && python3 -m pip install -q -U '$jax_spec' && python3 -m pip install -q -e $remote_dir"
    run gcloud "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install"
  fi

  # One command for every worker; each keeps its own log and streams it.
  quoted=""
  for word in "${train_args[@]}"; do quoted+=" $(shquote "$word")"; done
  train="cd $remote_dir && mkdir -p logs && python3 -m musegen_jax.main --distributed=on$quoted"
  train+=" 2>&1 | tee logs/worker_\$(hostname).log; exit \${PIPESTATUS[0]}"
  status=0
  run gcloud "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$train" || status=$?
  ((status == 0)) || echo "tpu_pod.sh: training failed (status $status); worker logs: $remote_dir/logs/ on each worker" >&2
else
  status=0
fi

if ((delete)); then
  run gcloud "${tpu[@]}" delete "$name" "${where[@]}" --quiet
fi
exit "$status"
