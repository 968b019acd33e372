"""Style transfer with the VAE's attribute vectors (issue 28, parts 4 and 5):
style latents in the bundle, `sample --transfer`, `evaluate --classifier` on
a VAE, on the labelled corpus the tests write (conftest.styles_data_dir)."""

from __future__ import annotations

import os

import note_seq
import numpy as np
import pytest

from musegen_jax import checkpoint
from musegen_jax import errors
from musegen_jax import evaluate as evaluate_lib
from musegen_jax import export as export_lib
from musegen_jax import sample as sample_lib
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import features
from musegen_jax.data import pipeline
from tests.conftest import STYLE_CORPUS_STYLES
from tests.conftest import _style_piece
from tests.conftest import load_config


@pytest.fixture(scope="module")
def vae_bundle(styles_data_dir, tmp_path_factory) -> str:
  run = str(tmp_path_factory.mktemp("vae_run"))
  bundle = str(tmp_path_factory.mktemp("vae") / "bundle")
  train.train_and_evaluate(load_config("vae", data__dir=styles_data_dir,
                                       num_train_steps=60, checkpoint_every_steps=60,
                                       eval_every_steps=60, sample_every_steps=0),
                           run)
  export_lib.export(run, bundle)
  return bundle


@pytest.mark.slow
def test_the_bundle_keeps_each_style_mean_latent_and_transfer_moves_by_them(vae_bundle):
  bundle = checkpoint.load_bundle(vae_bundle)
  assert list(bundle.config.styles) == list(STYLE_CORPUS_STYLES)
  table = bundle.extras["style_latents"]
  assert table["styles"] == list(STYLE_CORPUS_STYLES)
  # 6 train pieces per style; 48 quarter notes are 192 sixteenth-note chord
  # tokens and an EOS: 7 windows of 32.
  assert table["windows"] == [42, 42, 42]
  task = tasks.create_task(bundle.config,
                           pipeline.representation_from_spec(bundle.representation))
  piece = _style_piece("drone", seed=99)
  means = np.asarray(table["means"], np.float32)
  mu, _ = task.encode(bundle.params, task.encode_pieces([piece]))
  z, sources = task.transfer_latents(bundle.params, [piece], "runs", bundle.extras,
                                     from_style="drone", strength=0.5)
  expected = mu + 0.5 * (means[2] - means[1])
  np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
  assert sources == ["drone"]
  z0, nearest = task.transfer_latents(bundle.params, [piece], "runs", bundle.extras,
                                      strength=0.0)
  np.testing.assert_allclose(z0, mu, rtol=1e-6, atol=1e-6)
  assert nearest[0] in STYLE_CORPUS_STYLES
  with pytest.raises(errors.UserError, match=r"--to_style='jazz': unknown; this VAE "
                                             r"knows chorale, drone, runs"):
    task.transfer_latents(bundle.params, [piece], "jazz", bundle.extras)
  with pytest.raises(errors.UserError, match=r"--transfer needs a VAE trained on a "
                                             r"labelled dataset"):
    task.transfer_latents(bundle.params, [piece], "runs", {})


@pytest.mark.slow
def test_sample_transfer_writes_the_source_and_the_moved_pieces(vae_bundle, tmp_path):
  source = str(tmp_path / "drone.mid")
  note_seq.sequence_proto_to_midi_file(_style_piece("drone", seed=7), source)
  out = str(tmp_path / "to_runs")
  paths = sample_lib.sample(vae_bundle, out, num_samples=2, transfer=source,
                            to_style="runs", strength=1.0)
  assert len(paths) == 2
  for name in ("source.mid", "source.png", "sample_000.png", "sample_001.mid"):
    assert os.path.isfile(os.path.join(out, name)), name
  with pytest.raises(errors.UserError, match=r"--strength=1.5: must be in \[0, 1\]"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), transfer=source,
                      to_style="runs", strength=1.5)
  with pytest.raises(errors.UserError, match=r"--transfer=.*drone.mid: name the target "
                                             r"--to_style"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), transfer=source)
  with pytest.raises(errors.UserError, match=r"unknown; this VAE knows"):
    sample_lib.sample(vae_bundle, str(tmp_path / "x"), transfer=source, to_style="jazz")
  assert not os.path.exists(str(tmp_path / "x"))


@pytest.mark.slow
def test_evaluate_measures_a_transfer_with_the_classifier(vae_bundle, styles_data_dir,
                                                         tmp_path):
  cls_run, cls_bundle = str(tmp_path / "cls"), str(tmp_path / "cls_bundle")
  train.train_and_evaluate(load_config("style_classifier", data__dir=styles_data_dir),
                           cls_run)
  export_lib.export(cls_run, cls_bundle, "best")
  result = evaluate_lib.evaluate_transfer(vae_bundle, cls_bundle, to_style="runs",
                                          num_samples=3, split="test")
  runs = result["transfer"]["runs"]
  assert runs["pieces"] == 3  # Test pieces of chorale and drone, 2 each: the first 3.
  for key in ("target_share", "source_share", "pitch_class", "rhythm",
              "baseline_pitch_class", "baseline_rhythm", "source_window_share"):
    assert 0.0 <= runs[key] <= 1.0, key
  assert runs["target_share"] + runs["source_share"] <= 1.0
  # The synthetic styles are told apart in the VAE's windows as in whole
  # pieces: the classifier's ceiling for the shares is reached.
  assert runs["source_window_share"] == 1.0
  assert result["mean_target_share"] == runs["target_share"]


def test_pitch_class_and_rhythm_similarity():
  a = _style_piece("runs", seed=1)
  assert features.similarity(a, a) == {"pitch_class": pytest.approx(1.0),
                                       "rhythm": pytest.approx(1.0)}
  empty = note_seq.NoteSequence()
  assert features.similarity(a, empty) == {"pitch_class": 0.0, "rhythm": 0.0}
  # Drones sound on beat 1 of each bar only; runs on every sixteenth.
  drone, runs = _style_piece("drone", seed=2), _style_piece("runs", seed=3)
  assert features.onset_histogram(drone).tolist() == [12.0] + [0.0] * 15
  assert features.similarity(drone, runs)["rhythm"] == pytest.approx(0.25)
