"""config.log_to: TensorBoard and/or wandb beside the JSON log (issue 29)."""

from __future__ import annotations

import glob
import json
import os
import sys

import pytest

from musegen_jax import errors
from musegen_jax import hub
from musegen_jax import metrics
from musegen_jax import plots
from musegen_jax import train
from musegen_jax import workdir as workdir_lib
from tests.conftest import log_rows
from tests.conftest import tiny_lstm_config


def _wandb_runs(layout: workdir_lib.Layout) -> list[str]:
  return sorted(glob.glob(os.path.join(layout.wandb, "offline-run-*")))


@pytest.mark.slow
def test_wandb_offline_gets_the_scalars_and_images_and_a_resume_continues_its_run(
    tmp_path, monkeypatch):
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  assert metrics.wandb_mode() == "offline"
  workdir = str(tmp_path / "run")
  layout = workdir_lib.Layout(workdir)
  train.train_and_evaluate(
      tiny_lstm_config(log_to="wandb", eval_every_steps=10,
                       sample_every_steps=10), workdir)
  # wandb only: no TensorBoard files; the JSON log is always written.
  assert not os.path.exists(layout.tensorboard)
  assert [r["step"] for r in log_rows(workdir, "valid")] == [10]
  with open(layout.wandb_run_id, encoding="utf-8") as f:
    run_id = f.read().strip()
  (run,) = _wandb_runs(layout)
  assert run.endswith("-" + run_id)
  with open(os.path.join(run, f"run-{run_id}.wandb"), "rb") as f:
    records = f.read()
  # The run file holds protobuf records; the metric names are stored as
  # plain strings inside them.
  for key in (b"train/loss", b"valid/loss", b"samples/"):
    assert key in records, key
  images = glob.glob(os.path.join(run, "files", "media", "images", "**", "*.png"),
                     recursive=True)
  assert images

  # Resumed, the run logs into the same wandb run id (wandb sync merges the
  # offline folders of one id).
  train.train_and_evaluate(
      tiny_lstm_config(log_to="tensorboard,wandb", num_train_steps=20,
                       eval_every_steps=10, sample_every_steps=0), workdir)
  runs = _wandb_runs(layout)
  assert len(runs) == 2 and all(r.endswith("-" + run_id) for r in runs)
  assert os.listdir(layout.tensorboard)


def test_log_to_errors_are_one_line_and_come_before_training(monkeypatch):
  with pytest.raises(errors.UserError,
                     match=r"config.log_to='tensorbord': unknown sink "
                           r"'tensorbord'; allowed: .*tensorboard, wandb"):
    train.check_config(tiny_lstm_config(log_to="tensorbord"))
  monkeypatch.setitem(sys.modules, "wandb", None)  # As if not installed.
  with pytest.raises(errors.UserError,
                     match=r"config.log_to='tensorboard,wandb': wandb is not "
                           r"installed; pip install -e '.\[wandb\]'"):
    train.check_config(tiny_lstm_config(log_to="tensorboard,wandb"))
  assert metrics.parse_log_to(" tensorboard ,tensorboard,") == ("tensorboard",)
  assert metrics.parse_log_to("") == ()


def test_a_torn_last_log_line_is_skipped_by_every_reader_and_dropped_on_resume(
    tmp_path):
  # A run killed mid-write leaves a last line without its end; the model card,
  # the plots and a resumed run all read the log.
  workdir = str(tmp_path)
  path = os.path.join(workdir, "train_log.jsonl")
  whole = [{"step": 1, "train/loss": 2.0},
           {"step": 2, "split": "valid", "valid/loss": 1.5},
           {"step": 3, "train/loss": 1.0}]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in whole)
    f.write('{"step": 4, "train/loss": 0.9')
  assert metrics.read_log(path) == whole
  assert [r["step"] for r in hub.read_evaluations(path)] == [2]
  assert plots.read_eval_rows(workdir) == [{"step": 2, "split": "valid",
                                            "loss": 1.5}]
  writer = metrics.MetricWriter(workdir, resume_step=2, log_to="")
  writer.write_steps("train", [(3, {"loss": 0.5})])
  writer.close()
  assert metrics.read_log(path) == whole[:2] + [{"step": 3, "train/loss": 0.5}]
