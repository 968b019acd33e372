"""The piano-roll task on the bundled quarter-note JSB Chorales."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from musegen_jax import train
from musegen_jax.data import jsb_quarter
from musegen_jax.tasks import pianoroll

from conftest import load_config


def _softplus(x: float) -> float:
  return float(np.log1p(np.exp(x)))


def test_nll_sums_equal_a_hand_computation():
  # Two frames of one piece plus one padded frame, 88 keys.
  logits = np.zeros((1, 3, 88), np.float32)
  logits[0, 0, 0] = 2.0
  logits[0, 1, 5] = -1.0
  logits[0, 2, :] = 50.0  # Padding: must not count.
  frames = np.zeros((1, 3, 88), np.uint8)
  frames[0, 0, 0] = 1
  frames[0, 1, 5] = 1
  frames[0, 1, 7] = 1
  mask = np.array([[1, 1, 0]], np.uint8)
  # -log sigmoid(z) = softplus(-z); -log(1 - sigmoid(z)) = softplus(z).
  frame0 = _softplus(-2.0) + 87 * _softplus(0.0)
  frame1 = _softplus(1.0) + _softplus(0.0) + 86 * _softplus(0.0)
  sums = pianoroll.frame_nll_sums(jnp.asarray(logits), jnp.asarray(frames),
                                  jnp.asarray(mask))
  np.testing.assert_allclose(float(sums["nll_sum"]), frame0 + frame1, rtol=1e-6)
  assert float(sums["frame_sum"]) == 2.0
  out = pianoroll.PianorollTask.summarize(jax.device_get(sums))
  np.testing.assert_allclose(out["nll"], (frame0 + frame1) / 2, rtol=1e-6)


def test_inputs_are_the_previous_frames_after_a_zero_start():
  frames = jnp.arange(2 * 3 * 88).reshape(2, 3, 88) % 2
  inputs = pianoroll.shift_right(frames)
  np.testing.assert_array_equal(inputs[:, 0], 0.0)
  np.testing.assert_array_equal(inputs[:, 1:], frames[:, :-1])


def test_rolls_match_the_quarter_note_file():
  data = jsb_quarter.load_frames()
  assert [len(data[s]) for s in jsb_quarter.SPLITS] == [229, 76, 77]
  assert [sum(map(len, data[s])) for s in jsb_quarter.SPLITS] == [13807, 4602, 4725]
  roll = jsb_quarter.load_rolls("train")[0]
  # The first chorale of train opens with C4 C5 G5 E6, then C5 G5 E6, then
  # G4 Bb4 E5 C6 (the file's first frames).
  assert data["train"][0][:3] == [[60, 72, 79, 88], [72, 79, 88], [67, 70, 76, 84]]
  for t, pitches in enumerate(data["train"][0][:3]):
    assert sorted(np.flatnonzero(roll[t]) + 21) == pitches
  assert roll.shape == (len(data["train"][0]), 88)
  padded, mask = jsb_quarter.pad_rolls(jsb_quarter.load_rolls("test"), 160)
  assert padded.shape == (77, 160, 88) and int(mask.sum()) == 4725


def test_smoke_config_trains_on_8_devices_and_eval_covers_every_valid_frame(tmp_path):
  assert jax.device_count() == 8
  config = load_config("jsb_lstm", num_train_steps=6, eval_every_steps=6,
                       checkpoint_every_steps=6, log_every_steps=3,
                       sample_every_steps=6)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  with open(os.path.join(tmp_path, "train_log.jsonl"), encoding="utf-8") as f:
    losses = [json.loads(line)["train/loss"] for line in f]
  assert len(losses) == 6 and all(0 < x < 88 * np.log(2) + 1 for x in losses)
  assert os.listdir(tmp_path / "samples" / "6")

  # The loop's evaluation over the 8-device mesh counts every frame of the
  # 76 valid pieces exactly once.
  task = pianoroll.PianorollTask(config, None)
  eval_data = task.eval_data("", "valid")
  batches = list(task.eval_batches(eval_data))
  assert len(batches) == -(-76 // config.batch_size)
  assert sum(int(b["mask"].sum()) for b in batches) == 4602
  mesh = train.create_mesh(config)
  _, eval_step = train.jit_steps(task, mesh)
  valid = train.evaluate(eval_step, task, state.params, eval_data, mesh,
                         config.num_eval_batches)
  assert valid["frames"] == 4602
  assert 0 < valid["nll"] < 88 * np.log(2) + 1


def test_multihot_models_continue_from_their_carry():
  """A full pass over frames equals one frame at a time with the carry."""
  frames = (np.random.default_rng(0).random((2, 5, 88)) < 0.05).astype(np.float32)
  for name in ("jsb_lstm", "jsb_transformer"):
    config = load_config(name)
    task = pianoroll.PianorollTask(config, None)
    params = task.init_params(jax.random.PRNGKey(0))
    full, _ = task.model.apply({"params": params}, frames)
    first, carry = task.model.apply({"params": params}, frames[:, :1])
    steps = [first]
    for t in range(1, 5):
      logits, carry = task.model.apply({"params": params}, frames[:, t:t + 1],
                                       carry=carry)
      steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5,
                               err_msg=name)
    assert full.shape == (2, 5, 88)
