"""SIGKILL at unlucky moments, then the same command: nothing is lost.

The smoke training runs as a real subprocess and is killed three times (during
a checkpoint write, mid-interval, and during start-up); each time the same
command is started again. The per-step loss log and the final parameters
must equal, bit for bit, those of a run never killed.
"""

from __future__ import annotations

import glob
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from musegen_jax import checkpoint
from musegen_jax import export as export_lib
from musegen_jax import train

from conftest import REPO_ROOT, load_config, log_rows, tiny_lstm_config

OVERRIDES = {"num_train_steps": 60, "checkpoint_every_steps": 10,
             "eval_every_steps": 1000, "sample_every_steps": 0,
             "log_every_steps": 5}


def _command(workdir):
  return [sys.executable, "-m", "musegen_jax.main",
          f"--config={REPO_ROOT}/configs/lstm.py:smoke", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]


def _start(workdir):
  return subprocess.Popen(_command(workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)


def _kill(proc):
  os.killpg(proc.pid, signal.SIGKILL)
  return proc.communicate(timeout=30)[0]


def _wait_for(condition, proc, timeout=120.0):
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None, proc.communicate()[0]
    assert time.time() < deadline, "timed out"
    time.sleep(0.005)


def _complete_steps(ckpt_dir):
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(
      ckpt_dir) else []


def _losses(workdir):
  return [(r["step"], r["train/loss"]) for r in log_rows(workdir)]


@pytest.mark.slow
def test_sigkill_three_times_then_resume_equals_an_unkilled_run(tmp_path):
  rng = random.Random(0)
  workdir = str(tmp_path / "killed")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  moments = []

  # 1. During a checkpoint write: a temporary checkpoint directory exists.
  proc = _start(workdir)
  _wait_for(lambda: glob.glob(os.path.join(ckpt_dir, "*tmp*")), proc)
  writing = glob.glob(os.path.join(ckpt_dir, "*tmp*"))
  _kill(proc)
  moments.append(("checkpoint write", writing, _complete_steps(ckpt_dir)))

  # 2. Mid-interval, after a random number of further logged steps.
  proc = _start(workdir)
  start_lines = len(_losses(workdir))
  target = start_lines + rng.randint(7, 23)
  _wait_for(lambda: len(_losses(workdir)) >= target, proc)
  _kill(proc)
  moments.append(("mid-interval", target, _complete_steps(ckpt_dir)))

  # 3. During start-up (imports, restore, compile), at a random moment.
  proc = _start(workdir)
  time.sleep(rng.uniform(1.0, 3.0))
  _kill(proc)
  moments.append(("start-up", None, _complete_steps(ckpt_dir)))

  # Each restart resumed from the newest complete checkpoint, never the one
  # being written when the process died.
  last_complete = moments[-1][2][-1]
  final = subprocess.run(_command(workdir), capture_output=True, text=True,
                         timeout=300)
  assert final.returncode == 0, final.stdout + final.stderr
  resumed = int(re.search(r"Resumed from step (\d+)", final.stdout).group(1))
  assert resumed == last_complete, (resumed, moments)
  assert all(not name.endswith("tmp") for name in os.listdir(ckpt_dir))

  reference = str(tmp_path / "reference")
  state = train.train_and_evaluate(
      load_config("lstm", **{k: v for k, v in OVERRIDES.items()}), reference)
  killed_log, reference_log = _losses(workdir), _losses(reference)
  assert [s for s, _ in killed_log] == list(range(1, 61))  # Each step once.
  assert killed_log == reference_log  # Bit for bit.

  export_lib.export(workdir, str(tmp_path / "export"))
  params = checkpoint.load_bundle(str(tmp_path / "export")).params
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _tiny(**overrides):
  return tiny_lstm_config(**{"num_train_steps": 30, "warmup_steps": 5,
                             "keep_checkpoints": 5, **overrides})


@pytest.mark.slow
def test_damaged_checkpoints_are_skipped_named_and_kept_aside(tmp_path, capfd,
                                                             caplog):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  train.train_and_evaluate(_tiny(), workdir)
  assert _complete_steps(ckpt_dir) == [10, 20, 30]
  # Step 30: its array files deleted. Step 20: every file cut to half.
  for root, _, files in os.walk(os.path.join(ckpt_dir, "30", "state")):
    for name in files:
      os.remove(os.path.join(root, name))
  for root, _, files in os.walk(os.path.join(ckpt_dir, "20")):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
  capfd.readouterr()

  train.train_and_evaluate(_tiny(num_train_steps=35), workdir)
  out = capfd.readouterr()
  assert "Resumed from step 10" in out.out
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any("Skipping damaged checkpoint step 30" in w for w in warnings), warnings
  assert any("Skipping damaged checkpoint step 20" in w for w in warnings), warnings
  kept_aside = sorted(os.listdir(os.path.join(workdir, checkpoint.DAMAGED_DIR)))
  assert [name.split("-")[0] for name in kept_aside] == ["20", "30"]
  # The resumed run saved steps 20 and 30 again, and finished.
  assert _complete_steps(ckpt_dir) == [10, 20, 30, 35]


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_tiny(num_train_steps=10), workdir)
  state_dir = os.path.join(workdir, "checkpoints", "10", "state")
  for root, _, files in os.walk(state_dir):
    for name in files:
      os.remove(os.path.join(root, name))
  with pytest.raises(RuntimeError, match=r"No readable checkpoint .*step 10"):
    train.train_and_evaluate(_tiny(num_train_steps=20), workdir)
  assert _complete_steps(os.path.join(workdir, "checkpoints")) == [10]
