"""Workdir guards: one live run per workdir, no resume under an incompatible config."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from musegen_jax import errors
from musegen_jax import train
from musegen_jax import workdir as workdir_lib
from musegen_jax.data import shards

from conftest import load_config, tiny_lstm_config


def test_second_run_on_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  # Another process holds the workdir, as a live training run would.
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys, time
          from musegen_jax import workdir
          with workdir.hold({workdir!r}):
            print("held", flush=True)
            time.sleep(60)
          """)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirInUseError,
                       match=rf"in use by another run .*\"pid\": {holder.pid}"):
      train.train_and_evaluate(tiny_lstm_config(), workdir)
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone (killed: the OS released its lock): the run proceeds.
  train.train_and_evaluate(tiny_lstm_config(), workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["10"]


@pytest.mark.slow
def test_resume_with_another_model_is_refused_unless_allowed(tmp_path):
  workdir = str(tmp_path / "run")
  layout = workdir_lib.Layout(workdir)
  assert not layout.has_checkpoint()
  train.train_and_evaluate(tiny_lstm_config(sample_every_steps=10), workdir)
  # Everything the run wrote is where its layout says.
  assert layout.has_checkpoint() and os.listdir(layout.checkpoints) == ["10"]
  for path in (layout.config, layout.representation, layout.train_log):
    assert os.path.isfile(path), path
  assert os.listdir(layout.tensorboard) and os.listdir(layout.samples(10))
  assert not os.path.exists(layout.lock)  # Released when the run ended.
  with pytest.raises(ValueError, match=r"model.hidden_size: 32 -> 64.*allow_config_change"):
    train.train_and_evaluate(tiny_lstm_config(model__hidden_size=64, num_train_steps=20), workdir)
  # A longer schedule is no structural change: it resumes.
  train.train_and_evaluate(tiny_lstm_config(num_train_steps=20), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  # Allowed explicitly, a changed dropout (same parameters) resumes too.
  train.train_and_evaluate(tiny_lstm_config(num_train_steps=30, model__dropout_rate=0.2),
                           workdir, allow_config_change=True)
  assert "30" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_the_same_config_again_is_no_change(tmp_path, caplog):
  """The config as the run wrote it (JSON: its tuples became lists) against
  the same config: resumed without a "Config changed" warning."""
  config = tiny_lstm_config()
  assert any(isinstance(rule, tuple) for rule in config.logical_axis_rules)
  shards.write_json_atomic(os.path.join(tmp_path, workdir_lib.CONFIG_FILE),
                           config.to_dict())
  with caplog.at_level(logging.WARNING):
    workdir_lib.check_config(str(tmp_path), config)
  assert "Config changed" not in caplog.text
  with caplog.at_level(logging.WARNING):
    workdir_lib.check_config(str(tmp_path), tiny_lstm_config(seed=1))
  assert "Config changed since the last run" in caplog.text
  assert "seed: 0 -> 1" in caplog.text


def test_a_change_that_reshapes_the_train_state_is_refused(tmp_path):
  """gan.lr_end_factor 1 -> 0.1 adds a schedule count to Adam's state, so
  the checkpoints would not restore: one line naming the key, before any
  compute."""
  config = load_config("gan", variant="smoke")
  shards.write_json_atomic(os.path.join(tmp_path, workdir_lib.CONFIG_FILE),
                           config.to_dict())
  with pytest.raises(errors.UserError, match=r"gan.lr_end_factor: 1.0 -> 0.1.*"
                     r"gan.lr_end_factor cannot change under existing checkpoints"):
    workdir_lib.check_config(str(tmp_path), load_config("gan", variant="smoke",
                                                        gan__lr_end_factor=0.1))


def test_config_changes_lists_every_differing_key():
  old = {"model": {"hidden_size": 32, "name": "lstm"}, "seed": 0}
  new = {"model": {"hidden_size": 64, "name": "lstm"}, "seed": 0, "extra": 1}
  assert workdir_lib.config_changes(old, new) == {
      "extra": (None, 1), "model.hidden_size": (32, 64)}
