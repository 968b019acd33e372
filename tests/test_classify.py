"""The style classifier task (issue 28, part 2) on the labelled corpus the
tests write (conftest.styles_data_dir: three styles told apart by register
and rhythm)."""

from __future__ import annotations

import json
import os

import pytest

from musegen_jax import errors
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import train
from musegen_jax.tasks import classify
from tests.conftest import STYLE_CORPUS_STYLES
from tests.conftest import load_config
from tests.conftest import log_rows


@pytest.mark.slow
def test_the_classifier_learns_the_styles_and_evaluate_gives_the_confusion(
    styles_data_dir, tmp_path):
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "bundle")
  config = load_config("style_classifier", data__dir=styles_data_dir)
  train.train_and_evaluate(config, workdir)
  # The styles came from the data, sorted, and are recorded with the run.
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["styles"] == ["chorale", "drone", "runs"]
  valid = log_rows(workdir, "valid")
  assert [r["step"] for r in valid] == [30, 60]
  assert valid[-1]["valid/loss"] < valid[0]["valid/loss"] or valid[0]["valid/piece_accuracy"] == 1.0
  export_lib.export(workdir, bundle, "best")
  result = evaluate_lib.evaluate(bundle, split="test")
  assert result["task"] == "classify"
  assert result["piece_accuracy"] == 1.0 and result["accuracy"] > 0.9
  confusion = result["confusion"]
  assert confusion == {true: {pred: (2 if pred == true else 0) for pred in confusion}
                       for true in STYLE_CORPUS_STYLES}


def test_unlabelled_data_and_other_styles_are_refused(jsb_data_dir, styles_data_dir):
  with pytest.raises(errors.UserError, match=r"config.data.dir=.*has no style labels; "
                                             r"prepare it with --labels="):
    train.train_and_evaluate(load_config("style_classifier", data__dir=jsb_data_dir),
                             "/nonexistent/never_made")
  config = load_config("style_classifier", data__dir=styles_data_dir,
                       styles=("baroque", "jazz"))
  with pytest.raises(errors.UserError, match=r"config.styles=\['baroque', 'jazz'\] but "
                                             r"config.data.dir=.* has the styles "
                                             r"\['chorale', 'drone', 'runs'\]"):
    train.train_and_evaluate(config, "/nonexistent/never_made")
  assert not os.path.exists("/nonexistent/never_made")
  with pytest.raises(errors.UserError, match=r"config.data.window=0 must be > 0"):
    train.check_config(load_config("style_classifier", data__window=0))


def test_eval_windows_cover_a_piece_evenly():
  assert classify.eval_starts(10, 32, 4).tolist() == [0]
  assert classify.eval_starts(64, 32, 4).tolist() == [0, 32]
  assert classify.eval_starts(1000, 32, 4).tolist() == [0, 323, 645, 968]
