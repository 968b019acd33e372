"""`config.checkpoint_every_minutes`: saves by the clock as well as by steps,
and a run resumed from such a save repeats the uninterrupted one."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from musegen_jax import train

from conftest import log_rows, tiny_lstm_config


class _Killed(Exception):
  """The process dying, as far as the loop can tell."""


class _Clock:
  """`train._now` for a test: 0 s for the first `jump_at` readings, then an
  hour; `kill_at` readings in, it raises, as a killed process stops."""

  def __init__(self, jump_at: int, kill_at: int):
    self.calls, self.jump_at, self.kill_at = 0, jump_at, kill_at

  def __call__(self) -> float:
    self.calls += 1
    if self.calls == self.kill_at:
      raise _Killed()
    return 0.0 if self.calls < self.jump_at else 3600.0


def _config():
  return tiny_lstm_config(num_train_steps=16, checkpoint_every_steps=1000,
                          eval_every_steps=1000, keep_checkpoints=5,
                          checkpoint_every_minutes=30.0)


def _losses(workdir):
  return {row["step"]: row["train/loss"] for row in log_rows(workdir)}


@pytest.mark.slow
def test_a_save_by_the_clock_resumes_to_the_uninterrupted_losses(tmp_path,
                                                                monkeypatch):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  train.train_and_evaluate(_config(), full)  # The real clock: no time save.
  assert os.listdir(os.path.join(full, "checkpoints")) == ["16"]

  # Readings: 1 at the start, then one per step (2 = step 1), one after each
  # save. The clock passes 30 minutes at step 7, which saves; the process
  # dies reading it at step 11, with nothing saved since.
  monkeypatch.setattr(train, "_now", _Clock(jump_at=8, kill_at=13))
  with pytest.raises(_Killed):
    train.train_and_evaluate(_config(), cut)
  assert os.listdir(os.path.join(cut, "checkpoints")) == ["7"]

  monkeypatch.undo()
  train.train_and_evaluate(_config(), cut)
  assert _losses(cut) == _losses(full)  # Bit for bit, every step.


def test_every_process_saves_when_process_0s_clock_says_so(monkeypatch):
  """With several processes the stop flags are or-ed, the time to save is
  process 0's (two processes faked: this one is 0, the other 1)."""
  other = {"flags": None}

  def allgather(flags):
    return np.stack([flags, other["flags"]])

  class Manager:
    def reached_preemption(self, step):
      del step
      return False

  monkeypatch.setattr(train.jax, "process_count", lambda: 2)
  monkeypatch.setattr(train.multihost_utils, "process_allgather", allgather)
  agree = train._agree  # pylint: disable=protected-access
  stop, manager = threading.Event(), Manager()
  other["flags"] = np.asarray([True, True])  # Signalled, its clock says save.
  assert agree(stop, False, manager, 3) == (True, False)
  other["flags"] = np.asarray([False, False])
  assert agree(stop, True, manager, 3) == (False, True)
  stop.set()
  assert agree(stop, False, manager, 3) == (True, False)
