"""Two processes on localhost train as one: jax.distributed over gloo (CPU).

Each process is a real `python -m musegen_jax.main` with 2 forced CPU
devices; together they form a 4-device mesh. The runs are shared by the
tests of this module (one fixture), so the whole file takes well under 90 s
on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from musegen_jax import parallel

from conftest import REPO_ROOT

# The smoke config at test size; 6 steps, checkpoints at 3 and 6.
_OVERRIDES = {"model.hidden_size": 32, "model.num_layers": 1,
              "model.embed_dim": 16, "data.seq_len": 32, "batch_size": 8,
              "num_train_steps": 6, "checkpoint_every_steps": 3,
              "eval_every_steps": 6, "num_eval_batches": 1,
              "sample_every_steps": 0, "data.num_workers": 0,
              "log_every_steps": 1, "warmup_steps": 2}
_TIMEOUT_S = 120


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  # Replaces conftest's 8 devices: each process gets its own share.
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      [REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  for name in ("MUSEGEN_COORDINATOR_ADDRESS", "MUSEGEN_NUM_PROCESSES",
               "MUSEGEN_PROCESS_ID", "MUSEGEN_DISTRIBUTED"):
    env.pop(name, None)
  return env


def _command(workdir: str, *extra: str, **overrides) -> list[str]:
  settings = {**_OVERRIDES, **overrides}
  return [sys.executable, "-m", "musegen_jax.main",
          f"--config={REPO_ROOT}/configs/lstm.py:smoke", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in settings.items()], *extra]


def _run_processes(commands: list[list[str]], env: dict[str, str],
                   cwd: str) -> list[tuple[int, str]]:
  """Starts all commands at once; (returncode, output) of each."""
  procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for c in commands]
  results = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=_TIMEOUT_S)
      results.append((proc.returncode, out))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return results


def _two_processes(workdir: str, cwd: str, **overrides) -> list[tuple[int, str]]:
  port = _free_port()
  return _run_processes(
      [_command(workdir, f"--coordinator_address=localhost:{port}",
                "--num_processes=2", f"--process_id={i}", **overrides)
       for i in range(2)], _env(2), cwd)


def _train_losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "train_log.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, jsb_data_dir):
  """Two processes for 6 steps, then again to 9; one process, 4 devices, 6."""
  del jsb_data_dir  # Prepared once here, so the processes do not race to.
  root = tmp_path_factory.mktemp("multihost")
  two, one = str(root / "two"), str(root / "one")
  timings = {}
  start = time.perf_counter()
  first = _two_processes(two, str(root))
  timings["two_processes_6_steps"] = time.perf_counter() - start
  losses_at_6 = _train_losses(two) if os.path.exists(
      os.path.join(two, "train_log.jsonl")) else {}
  checkpoints_at_6 = sorted(os.listdir(os.path.join(two, "checkpoints"))) if (
      os.path.isdir(os.path.join(two, "checkpoints"))) else []
  start = time.perf_counter()
  resumed = _two_processes(two, str(root), num_train_steps=9)
  timings["two_processes_resume_to_9"] = time.perf_counter() - start
  start = time.perf_counter()
  (single,) = _run_processes([_command(one)], _env(4), str(root))
  timings["one_process_6_steps"] = time.perf_counter() - start
  print("multihost timings (s):", {k: round(v, 1) for k, v in timings.items()})
  return dict(two=two, one=one, first=first, resumed=resumed, single=single,
              losses_at_6=losses_at_6, checkpoints_at_6=checkpoints_at_6)


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_and_match_one_process(runs):
  """Two processes x 2 devices train 6 steps, checkpoint, resume to 9, and
  give one process x 4 devices' losses. (One test for the fixture's three
  runs, so that they happen once whichever test worker takes it.)"""
  for i, (code, out) in enumerate(runs["first"]):
    assert code == 0, f"process {i}:\n{out[-4000:]}"
    assert f"process {i} of 2: 2 local / 4 global cpu device(s)" in out
  # Only process 0 writes logs; the checkpoints hold the whole state.
  assert "4 cpu device(s)" in runs["first"][0][1]
  assert sorted(runs["losses_at_6"]) == list(range(1, 7))
  assert runs["checkpoints_at_6"] == ["3", "6"]

  for i, (code, out) in enumerate(runs["resumed"]):
    assert code == 0, f"process {i}:\n{out[-4000:]}"
  assert "Resumed from step 6" in runs["resumed"][0][1]
  losses = _train_losses(runs["two"])
  assert sorted(losses) == list(range(1, 10))
  # Steps 1-6 were not rewritten by the resumed run.
  assert {s: losses[s] for s in range(1, 7)} == runs["losses_at_6"]
  assert "9" in os.listdir(os.path.join(runs["two"], "checkpoints"))
  assert all(np.isfinite(v) for v in losses.values())

  # 2 processes x 2 devices give 1 process x 4 devices' losses. Each process
  # reads every second element of the shuffled, cropped stream
  # (data/pipeline.py slices after the random crop), so the global batches
  # are the same records cut at the same offsets as with one process.
  code, out = runs["single"]
  assert code == 0, out[-4000:]
  one = _train_losses(runs["one"])
  two = runs["losses_at_6"]
  assert sorted(one) == sorted(two) == list(range(1, 7))
  np.testing.assert_allclose([two[s] for s in range(1, 7)],
                             [one[s] for s in range(1, 7)], rtol=1e-5,
                             err_msg="per-step train loss, 2 processes vs 1")


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path, jsb_data_dir):
  """SIGTERM reaches only process 1 (as on a pod where one host is
  preempted): the processes agree on the step, both save it and exit 0, and
  the same command resumes from it."""
  del jsb_data_dir  # Prepared before the processes start.
  workdir = str(tmp_path / "run")
  port = _free_port()
  overrides = dict(num_train_steps=100_000, checkpoint_every_steps=100_000,
                   eval_every_steps=100_000)
  procs = [subprocess.Popen(
      _command(workdir, f"--coordinator_address=localhost:{port}",
               "--num_processes=2", f"--process_id={i}", **overrides),
      cwd=str(tmp_path), env=_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    log = os.path.join(workdir, "train_log.jsonl")
    deadline = time.monotonic() + _TIMEOUT_S
    while time.monotonic() < deadline and not (
        os.path.exists(log) and sum(1 for _ in open(log, encoding="utf-8")) >= 5):
      assert all(p.poll() is None for p in procs), "a process exited early"
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=_TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (proc, out) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f"process {i}:\n{out[-4000:]}"
  match = re.search(r"Stopped at step (\d+)", outputs[0])
  assert match, outputs[0][-4000:]
  step = int(match.group(1))
  assert 5 <= step < 100_000
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
  assert max(_train_losses(workdir)) == step

  resumed = _two_processes(workdir, str(tmp_path), **{**overrides,
                                                      "num_train_steps": step + 2})
  for i, (code, out) in enumerate(resumed):
    assert code == 0, f"process {i}:\n{out[-4000:]}"
  assert f"Resumed from step {step}" in resumed[0][1]
  assert sorted(_train_losses(workdir)) == list(range(1, step + 3))


def test_unreachable_coordinator_fails_naming_it_within_the_timeout(tmp_path):
  port = _free_port()  # Nobody listens here.
  start = time.perf_counter()
  [(code, out)] = _run_processes(
      [_command(str(tmp_path / "run"), f"--coordinator_address=localhost:{port}",
                "--num_processes=2", "--process_id=1",
                "--distributed_timeout_s=5")], _env(2), str(tmp_path))
  elapsed = time.perf_counter() - start
  assert code == 1, out
  assert f"no coordinator answers at localhost:{port}" in out, out
  assert "timed out after 5 s" in out
  assert elapsed < 30, elapsed


def test_coordinator_alone_fails_naming_the_missing_processes(tmp_path):
  """Process 0 started with --num_processes=2, and no process 1."""
  port = _free_port()
  [(code, out)] = _run_processes(
      [_command(str(tmp_path / "run"), f"--coordinator_address=localhost:{port}",
                "--num_processes=2", "--process_id=0",
                "--distributed_timeout_s=5")], _env(2), str(tmp_path))
  assert code == 1, out
  assert f"listens on localhost:{port}, but not all 2 processes joined" in out


@pytest.mark.parametrize("flags, env, expected", [
    (["--coordinator_address=localhost:1234"], {},
     "--num_processes (or $MUSEGEN_NUM_PROCESSES) and --process_id "
     "(or $MUSEGEN_PROCESS_ID) missing"),
    (["--num_processes=2", "--process_id=0"], {},
     "--coordinator_address (or $MUSEGEN_COORDINATOR_ADDRESS) missing"),
    (["--num_processes=2"], {"MUSEGEN_COORDINATOR_ADDRESS": "localhost:1234"},
     "--process_id (or $MUSEGEN_PROCESS_ID) missing"),
    (["--coordinator_address=localhost:1234", "--num_processes=2",
      "--process_id=2"], {}, "--process_id=2 must be in [0, 2)"),
    (["--coordinator_address=localhost", "--num_processes=2",
      "--process_id=0"], {}, "must be HOST:PORT"),
    ([], {"MUSEGEN_NUM_PROCESSES": "two"},
     "$MUSEGEN_NUM_PROCESSES='two' is not a valid int"),
])
def test_bad_multi_process_settings_fail_before_any_compute(tmp_path, flags, env,
                                                            expected):
  result = subprocess.run(_command(str(tmp_path / "run"), *flags), cwd=tmp_path,
                          env={**_env(2), **env}, capture_output=True,
                          text=True, timeout=_TIMEOUT_S)
  assert result.returncode == 2, result.stdout + result.stderr
  assert expected in result.stderr, result.stderr
  assert not os.path.exists(tmp_path / "run")


def test_process_count_must_agree_with_the_cluster_found(monkeypatch):
  for name, value in {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-4]",
                      "SLURM_NTASKS": "4", "SLURM_PROCID": "0",
                      "SLURM_LOCALID": "0"}.items():
    monkeypatch.setenv(name, value)
  assert parallel.detect_cluster() == ("SLURM_NTASKS", 4)
  with pytest.raises(ValueError, match=r"--num_processes=2 disagrees with the "
                     r"4 processes that \$SLURM_NTASKS gives"):
    parallel.initialize_distributed("n1:1234", 2, 0)


def test_one_process_joins_nothing(monkeypatch):
  for name in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
               "MEGASCALE_NUM_SLICES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.detect_cluster() is None
  assert not parallel.initialize_distributed()
  assert not parallel.initialize_distributed("localhost:1234", 1, 0)
  assert not parallel.initialize_distributed(mode="off")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
  monkeypatch.setenv("MEGASCALE_NUM_SLICES", "2")
  assert parallel.detect_cluster()[1] == 8
