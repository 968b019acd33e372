"""The style classifier task (issue 28, part 2) on a labelled corpus the test
writes: three styles told apart by register and rhythm."""

from __future__ import annotations

import json
import os

import note_seq
import numpy as np
import pytest

from musegen_jax import errors
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import prepare as prepare_lib
from musegen_jax import train
from musegen_jax.tasks import classify
from tests.conftest import load_config
from tests.conftest import log_rows

# style -> (lowest pitch, note length in quarters, notes per chord)
_STYLES = {"drone": (36, 4.0, 1), "runs": (62, 0.25, 1), "chorale": (79, 1.0, 3)}


def _piece(style: str, seed: int) -> note_seq.NoteSequence:
  low, length, chord = _STYLES[style]
  rng = np.random.default_rng(seed)
  ns = note_seq.NoteSequence(ticks_per_quarter=220)
  ns.tempos.add(qpm=120.0)
  t = 0.0
  while t < 24.0:  # 48 quarter notes.
    root = low + int(rng.integers(0, 8))
    for k in range(chord):
      ns.notes.add(pitch=root + 4 * k, velocity=80, start_time=t,
                   end_time=t + length * 0.5)
    t += length * 0.5
  ns.total_time = t
  return ns


@pytest.fixture(scope="module")
def styles_dir(tmp_path_factory):
  """Three styles x (6 train, 2 valid, 2 test) pieces, prepared with labels."""
  root = tmp_path_factory.mktemp("styles")
  seed = 0
  for style in _STYLES:
    for split, count in (("train", 6), ("valid", 2), ("test", 2)):
      for i in range(count):
        path = root / "midi" / style / split / f"{style}_{i}.mid"
        os.makedirs(path.parent, exist_ok=True)
        note_seq.sequence_proto_to_midi_file(_piece(style, seed), str(path))
        seed += 1
  out = str(root / "data")
  prepare_lib.prepare(str(root / "midi"), out, num_workers=0, labels="folder",
                      progress=False)
  return out


@pytest.mark.slow
def test_the_classifier_learns_the_styles_and_evaluate_gives_the_confusion(
    styles_dir, tmp_path):
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "bundle")
  config = load_config("style_classifier", data__dir=styles_dir)
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
                       for true in ("chorale", "drone", "runs")}


def test_unlabelled_data_and_other_styles_are_refused(jsb_data_dir, styles_dir):
  with pytest.raises(errors.UserError, match=r"config.data.dir=.*has no style labels; "
                                             r"prepare it with --labels="):
    train.train_and_evaluate(load_config("style_classifier", data__dir=jsb_data_dir),
                             "/nonexistent/never_made")
  config = load_config("style_classifier", data__dir=styles_dir,
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
