"""Style-conditioned token models: style tokens, label dropout, classifier-free
guidance, `sample --style` and `evaluate --classifier` (issue 28, parts 3
and 5), on the labelled corpus the tests write (conftest.styles_data_dir)."""

from __future__ import annotations

import os

import jax
import note_seq
import numpy as np
import pytest

from musegen_jax import errors
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import sample as sample_lib
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import pipeline
from tests.conftest import STYLE_CORPUS_STYLES
from tests.conftest import load_config
from tests.conftest import tiny_lstm_config


def _conditioned_config(data_dir: str, **overrides):
  settings = dict(condition__enabled=True, data__dir=data_dir, data__seq_len=48,
                  num_eval_batches=-1,
                  num_train_steps=10)
  settings.update(overrides)
  return tiny_lstm_config(**settings)


def _task(config):
  tasks.configure_from_data(config, config.data.dir)
  return tasks.create_task(config, train.load_representation(config, config.data.dir))


@pytest.mark.parametrize("representation", ["performance", "miditok"])
def test_windows_start_with_their_piece_style_and_the_vocabulary_grows(
    styles_data_dir, representation):
  # miditok: REMI, the tokens of the measured style LSTM (README, Styles).
  config = _conditioned_config(styles_data_dir, data__representation=representation)
  task = _task(config)
  assert task.styles == list(STYLE_CORPUS_STYLES)
  assert task.vocab_size == task.num_content + len(STYLE_CORPUS_STYLES) + 1
  windows = task.eval_data(styles_data_dir, "valid")
  first = windows[:, 0] - task.style_first_id
  # Every window starts with a style token, and every style's pieces are there.
  assert set(first.tolist()) == {0, 1, 2}
  assert np.all(windows[:, 1:] < task.num_content)
  # The per-piece labels are kept: a drone piece's windows say "drone".
  records = list(pipeline.shards.read_note_sequences(
      pipeline.shards.split_paths(styles_data_dir, "valid")))
  first_piece = records[0]
  assert STYLE_CORPUS_STYLES[first[0]] == first_piece.sequence_metadata.genre[0]
  batch = next(iter(task.create_train_dataset(styles_data_dir)))
  assert batch["tokens"].shape == (config.batch_size, config.data.seq_len + 1)
  assert np.all((batch["tokens"][:, 0] >= task.style_first_id) &
                (batch["tokens"][:, 0] < task.null_style_id))


def test_guidance_mixes_the_conditioned_and_unconditioned_passes(styles_data_dir):
  task = _task(_conditioned_config(styles_data_dir))
  # Scaled up, the fresh model's logits are sharp enough that the style token
  # changes the draws.
  params = jax.tree.map(lambda x: 8.0 * x, task.init_params(jax.random.PRNGKey(1)))
  rng = jax.random.PRNGKey(2)
  draw = lambda style, guidance: task.sample_pieces(
      params, rng, num_samples=3, length=40, style=style, guidance=guidance)[0]
  # Guidance 0 is the unconditioned pass alone; 1 the conditioned one alone.
  np.testing.assert_array_equal(draw("drone", 0.0), draw(None, 1.0))
  conditioned = draw("drone", 1.0)
  assert not np.array_equal(conditioned, draw(None, 1.0))
  guided = draw("drone", 3.0)
  assert not np.array_equal(conditioned, guided)
  # Style tokens and "no style" are never drawn.
  for tokens in (conditioned, guided):
    assert np.all(tokens < task.num_content)
  with pytest.raises(errors.UserError, match=r"--style='baroque': unknown; this model "
                                             r"knows chorale, drone, runs"):
    task.style_token("baroque")
  plain = _task(tiny_lstm_config(data__dir=styles_data_dir))
  with pytest.raises(errors.UserError, match=r"--style=drone: this model is not "
                                             r"style-conditioned"):
    plain.style_token("drone")
  with pytest.raises(ValueError, match=r"config.condition.dropout=1.5 must be in \[0, 1\)"):
    train.check_config(_conditioned_config(styles_data_dir, condition__dropout=1.5))


@pytest.mark.slow
def test_a_conditioned_lstm_samples_each_style_that_the_classifier_recognises(
    styles_data_dir, tmp_path):
  run, bundle = str(tmp_path / "lstm"), str(tmp_path / "lstm_bundle")
  train.train_and_evaluate(_conditioned_config(
      styles_data_dir, num_train_steps=200, learning_rate=1e-2, warmup_steps=10,
      checkpoint_every_steps=200, eval_every_steps=200), run)
  export_lib.export(run, bundle)

  out = str(tmp_path / "drone_samples")
  paths = sample_lib.sample(bundle, out, num_samples=2, length=200, style="drone",
                            guidance=2.0)
  assert len(paths) == 2 and all(os.path.isfile(p) for p in paths)
  pitches = [n.pitch for p in paths for n in note_seq.midi_file_to_note_sequence(p).notes]
  # The drone style lives two octaves below the others.
  assert pitches and np.median(pitches) < 55
  with pytest.raises(errors.UserError, match=r"unknown; this model knows chorale, "
                                             r"drone, runs"):
    sample_lib.sample(bundle, str(tmp_path / "x"), style="jazz")
  assert not os.path.exists(str(tmp_path / "x"))
  with pytest.raises(errors.UserError, match=r"--guidance=2.0: name the --style"):
    sample_lib.sample(bundle, str(tmp_path / "x"), guidance=2.0)

  cls_run, cls_bundle = str(tmp_path / "cls"), str(tmp_path / "cls_bundle")
  train.train_and_evaluate(load_config("style_classifier", data__dir=styles_data_dir),
                           cls_run)
  export_lib.export(cls_run, cls_bundle, "best")
  result = evaluate_lib.evaluate_styles(bundle, cls_bundle, num_samples=8,
                                        guidance=2.0, length=300)
  assert sorted(result["style_share"]) == list(STYLE_CORPUS_STYLES)
  for style, counts in result["predicted"].items():
    assert sum(counts.values()) == 8
    assert result["style_share"][style] == counts[style] / 8
  assert result["mean_style_share"] >= 0.6, result
  with pytest.raises(errors.UserError, match=r"--classifier=.* holds a 'lm' model"):
    evaluate_lib.evaluate_styles(bundle, bundle)
