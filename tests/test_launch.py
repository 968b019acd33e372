"""launch/ scripts: --help, dry runs (no gcloud, srun or scontrol needed) and
clear errors for missing arguments."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import tempfile

import pytest

from conftest import REPO_ROOT

LAUNCH = os.path.join(REPO_ROOT, "launch")
SCRIPTS = ("local_multiprocess.sh", "tpu_pod.sh", "gpu_slurm.sbatch")
TRAIN_ARGS = ["--config=configs/lstm.py:smoke", "--workdir=/shared/runs/x y",
              "--config.batch_size=64"]


@functools.cache
def _tools_dir() -> str:
  """A PATH directory with the basic tools the scripts use, and nothing else:
  no gcloud, srun, scontrol or nvidia-smi, which the dry runs must not need."""
  directory = tempfile.mkdtemp(prefix="musegen_launch_tools-")
  for tool in ("bash", "cat", "dirname", "env", "head", "mkdir", "tail"):
    os.symlink(shutil.which(tool), os.path.join(directory, tool))
  return directory


def _bash(script: str, *args: str, env: dict[str, str] | None = None,
          extra_path: str | None = None) -> subprocess.CompletedProcess:
  environ = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "DRY_RUN"))}
  environ["PATH"] = os.pathsep.join(p for p in (extra_path, _tools_dir()) if p)
  environ.update(env or {})
  return subprocess.run([shutil.which("bash"), os.path.join(LAUNCH, script), *args],
                        capture_output=True, text=True, env=environ, timeout=60)


def _commands(output: str) -> list[list[str]]:
  """The '+ ...' lines of a dry run, split as the shell would."""
  return [shlex.split(line[2:]) for line in output.splitlines()
          if line.startswith("+ ") and not line.startswith("+ (")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_exits_0(script):
  result = _bash(script, "--help")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("Usage:")
  assert "--dry-run" in result.stdout


def test_local_multiprocess_dry_run_gives_each_process_its_devices():
  result = _bash("local_multiprocess.sh", "--num_processes", "3",
                 "--devices_per_process=2", "--port", "23456", "--dry-run",
                 "--", *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  lines = [l for l in result.stdout.splitlines() if "musegen_jax.main" in l]
  assert len(lines) == 3
  for i, line in enumerate(lines):
    words = shlex.split(line.split(" > ")[0])
    assert words[:3] == ["env", "JAX_PLATFORMS=cpu",
                         "XLA_FLAGS=--xla_force_host_platform_device_count=2"]
    assert words[4:6] == ["-m", "musegen_jax.main"]
    assert words[6:9] == TRAIN_ARGS  # Quoted so that "x y" stays one word.
    assert words[9:] == ["--coordinator_address=localhost:23456",
                         "--num_processes=3", f"--process_id={i}"]
    assert f"'/shared/runs/x y/logs/process_{i}.log'" in line


def test_local_multiprocess_splits_gpus():
  result = _bash("local_multiprocess.sh", "--num_processes=2",
                 "--devices_per_process=4", "--platform=gpu", "--dry-run", "--",
                 *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  assert "CUDA_VISIBLE_DEVICES=0,1,2,3 " in result.stdout
  assert "CUDA_VISIBLE_DEVICES=4,5,6,7 " in result.stdout


def test_tpu_pod_dry_run_creates_installs_runs_on_all_workers_and_deletes():
  result = _bash("tpu_pod.sh", "--name", "pod1", "--zone=us-central2-b",
                 "--accelerator_type", "v4-32", "--project=p", "--delete",
                 "--dry-run", "--", *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  for command in commands:
    assert command[:3] == ["gcloud", "compute", "tpus"], command
    assert "--zone=us-central2-b" in command and "--project=p" in command
  verbs = [c[4] for c in commands]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "delete"]
  create = commands[1]
  assert "--accelerator-type=v4-32" in create
  scp, install, train = commands[2:5]
  assert "--worker=all" in scp and "--worker=all" in install
  assert "pip install" in install[-1] and "jax[tpu]" in install[-1]
  assert "--worker=all" in train
  remote = shlex.split(train[-1].split("=", 1)[1])
  assert remote[remote.index("-m") + 1] == "musegen_jax.main"
  assert "--distributed=on" in remote
  assert all(arg in remote for arg in TRAIN_ARGS)
  assert "tee" in remote
  assert commands[5][-1] == "--quiet"


def test_tpu_pod_delete_alone_only_deletes():
  result = _bash("tpu_pod.sh", "--name=pod1", "--zone=z", "--delete", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert [c[4] for c in _commands(result.stdout)] == ["delete"]


@pytest.mark.parametrize("env, args", [
    ({"DRY_RUN": "1"}, []),
    ({}, ["--dry-run"]),
])
def test_gpu_slurm_dry_run_passes_the_coordinator_flags_through_srun(env, args):
  result = _bash("gpu_slurm.sbatch", *args, *TRAIN_ARGS,
                 env={**env, "SLURM_JOB_ID": "4097", "SLURM_NNODES": "3",
                      "SLURM_JOB_NODELIST": "gpu-[07-09]"})
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "scontrol show hostnames gpu-[07-09]" in out
  [srun] = [c for c in _commands(out) if c[0] == "srun"]
  assert "--nodes=3" in srun and "--ntasks-per-node=1" in srun
  assert "--export=ALL,MUSEGEN_COORDINATOR_ADDRESS=gpu-07:61441" in srun
  script = srun[srun.index("-c") + 1]
  for piece in ("-m musegen_jax.main", '--num_processes="$SLURM_NTASKS"',
                '--process_id="$SLURM_PROCID"',
                '--coordinator_address="$MUSEGEN_COORDINATOR_ADDRESS"'):
    assert piece in script
  assert srun[-3:] == TRAIN_ARGS
  for i in range(3):
    assert (f"--coordinator_address=gpu-07:61441 --num_processes=3 "
            f"--process_id={i}") in out


def test_gpu_slurm_uses_scontrol_when_there(tmp_path):
  fake = tmp_path / "scontrol"
  fake.write_text("#!/bin/sh\necho n-a\necho n-b\n")
  fake.chmod(0o755)
  result = _bash("gpu_slurm.sbatch", "--dry-run", "--port=1234", *TRAIN_ARGS,
                 env={"SLURM_JOB_ID": "1", "SLURM_NNODES": "2",
                      "SLURM_JOB_NODELIST": "n-[a-b]"},
                 extra_path=str(tmp_path))
  assert result.returncode == 0, result.stderr
  assert "MUSEGEN_COORDINATOR_ADDRESS=n-a:1234" in result.stdout


@pytest.mark.parametrize("script, args, message", [
    ("local_multiprocess.sh", ["--num_processes=2"], "no training arguments"),
    ("local_multiprocess.sh", ["--", "--config=c"], "need --workdir"),
    ("local_multiprocess.sh", ["--num_processes=0", "--", *TRAIN_ARGS],
     "--num_processes must be a positive integer"),
    ("local_multiprocess.sh", ["--port"], "--port needs a value"),
    ("tpu_pod.sh", ["--zone=z", "--", *TRAIN_ARGS], "--name is required"),
    ("tpu_pod.sh", ["--name=n", "--", *TRAIN_ARGS], "--zone is required"),
    ("tpu_pod.sh", ["--name=n", "--zone=z"], "nothing to do"),
    ("tpu_pod.sh", ["--name=n", "--zone=z", "--", *TRAIN_ARGS],
     "gcloud is not installed"),
    ("gpu_slurm.sbatch", [*TRAIN_ARGS], "not inside a SLURM allocation"),
    ("gpu_slurm.sbatch", ["--dry-run"], "no training arguments"),
    ("gpu_slurm.sbatch", ["--dry-run", "--config=c"], "need --workdir"),
])
def test_missing_or_bad_arguments_fail_clearly(script, args, message):
  result = _bash(script, *args)
  assert result.returncode == 2, result.stdout + result.stderr
  assert message in result.stderr
  assert "--help" in result.stderr
