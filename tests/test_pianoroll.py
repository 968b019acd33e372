"""The piano-roll task on the bundled quarter-note JSB Chorales."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import note_seq
import numpy as np
import pytest

from musegen_jax import checkpoint
from musegen_jax import errors
from musegen_jax import evaluate
from musegen_jax import export
from musegen_jax import sample as sample_lib
from musegen_jax import train
from musegen_jax.data import jsb_quarter
from musegen_jax.data.representations import pianoroll as pianoroll_rep
from musegen_jax.data.representations import serial_frames
from musegen_jax.tasks import pianoroll

from conftest import load_config, log_rows


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
  # Evaluation (and ensembles) score the keys' log-probabilities instead.
  log_probs = pianoroll.key_log_probs(jnp.asarray(logits))
  np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-6)
  from_log_probs = pianoroll.frame_log_prob_sums(
      log_probs, jnp.asarray(frames), jnp.asarray(mask))
  np.testing.assert_allclose(float(from_log_probs["nll_sum"]), frame0 + frame1,
                             rtol=1e-6)
  assert float(from_log_probs["frame_sum"]) == 2.0
  # Distillation's soft targets: the cross-entropy -q log p - (1-q) log(1-p).
  soft = frames.astype(np.float32)
  soft[0, 0, 0] = 0.75
  soft[0, 1, 3] = 0.25
  frame0_soft = 0.75 * _softplus(-2.0) + 0.25 * _softplus(2.0) + 87 * _softplus(0.0)
  frame1_soft = frame1  # Logit 0 at key 3: log 2 whatever its target.
  sums = pianoroll.frame_nll_sums(jnp.asarray(logits), jnp.asarray(soft),
                                  jnp.asarray(mask))
  np.testing.assert_allclose(float(sums["nll_sum"]), frame0_soft + frame1_soft,
                             rtol=1e-6)


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


@pytest.mark.slow
def test_smoke_config_trains_on_8_devices_and_eval_covers_every_valid_frame(tmp_path):
  assert jax.device_count() == 8
  config = load_config("jsb_lstm", num_train_steps=6, eval_every_steps=3,
                       checkpoint_every_steps=3, log_every_steps=3,
                       sample_every_steps=6)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  losses = [r["train/loss"] for r in log_rows(tmp_path)]
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

  # An ensemble of the step-3 and step-6 bundles: each member's figure is
  # its own evaluation; the ensemble's is the NLL of the members' averaged
  # key probabilities, recomputed here in numpy over the valid pieces.
  bundles = [str(tmp_path / f"export_{step}") for step in (3, 6)]
  for step, bundle in zip((3, 6), bundles):
    export.export(str(tmp_path), bundle, str(step))
  result = evaluate.evaluate(",".join(bundles), split="valid")
  assert [m["step"] for m in result["members"]] == [3, 6]
  for member, bundle in zip(result["members"], bundles):
    alone = evaluate.evaluate(bundle, split="valid")
    np.testing.assert_allclose(member["nll"], alone["nll"], rtol=1e-6)
  frames, mask = eval_data["frames"], eval_data["mask"].astype(bool)
  probs_on = [np.exp(np.asarray(task.eval_log_probs(
      checkpoint.load_bundle(b).params, {"frames": frames}), np.float64)[..., 1])
              for b in bundles]
  on = np.mean(probs_on, axis=0)
  likelihood = np.where(frames == 1, on, 1.0 - on)
  expected = -np.log(likelihood).sum(-1)[mask].sum() / mask.sum()
  np.testing.assert_allclose(result["nll"], expected, rtol=1e-5)
  assert result["frames"] == 4602
  # A mixture is never worse than its members' average (Jensen).
  assert result["nll"] <= np.mean([m["nll"] for m in result["members"]])
  assert result["members"][0]["nll"] != result["members"][1]["nll"]
  with pytest.raises(ValueError, match="two or more bundles"):
    evaluate.evaluate_ensemble(bundles[:1])

  # Distillation from the two bundles: the teachers' key probabilities are
  # the ensemble's, and training batches carry them mixed with the frames.
  np.testing.assert_allclose(pianoroll.teacher_probs(bundles, frames), on,
                             rtol=1e-5, atol=1e-7)
  student = load_config("jsb_lstm", num_train_steps=2, eval_every_steps=2,
                        checkpoint_every_steps=2, sample_every_steps=0,
                        distill_teachers=",".join(bundles), distill_weight=0.25)
  train.check_config(student)
  batch = next(iter(pianoroll.PianorollTask(student, None).create_train_dataset("")))
  teachers = pianoroll.teacher_probs(bundles, batch["frames"])
  np.testing.assert_allclose(
      batch["targets"], 0.25 * teachers + 0.75 * batch["frames"], rtol=1e-5,
      atol=1e-7)
  assert 0 < batch["targets"].min() and batch["targets"].max() < 1
  state = train.train_and_evaluate(student, str(tmp_path / "student"))
  assert int(state.step) == 2


@pytest.mark.usefixtures("fewer_optimizations")
def test_multihot_models_continue_from_their_carry():
  """A full pass over frames equals one frame at a time with the carry."""
  frames = (np.random.default_rng(0).random((2, 5, 88)) < 0.05).astype(np.float32)
  for name in ("jsb_lstm", "jsb_transformer"):
    config = load_config(name)
    task = pianoroll.PianorollTask(config, None)
    params = task.init_params(jax.random.PRNGKey(0))
    apply = jax.jit(task.model.apply)
    full, _ = apply({"params": params}, frames)
    first, carry = apply({"params": params}, frames[:, :1])
    steps = [first]
    for t in range(1, 5):
      logits, carry = apply({"params": params}, frames[:, t:t + 1], carry=carry)
      steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5,
                               err_msg=name)
    assert full.shape == (2, 5, 88)


# The serial frame model: each frame's keys ascending, then EOF.

def test_serial_tokens_round_trip_on_the_chorales():
  data = jsb_quarter.load_frames()
  longest = 0
  for split in jsb_quarter.SPLITS:
    for piece, roll in zip(data[split], jsb_quarter.load_rolls(split)):
      tokens = serial_frames.roll_to_tokens(roll)
      assert tokens[0] == serial_frames.START_ID
      assert len(tokens) == 1 + sum(len(frame) + 1 for frame in piece)
      assert int(np.sum(tokens == serial_frames.EOF_ID)) == len(piece)
      np.testing.assert_array_equal(serial_frames.tokens_to_roll(tokens), roll)
      longest = max(longest, len(tokens))
  assert longest == 788  # config.data.max_tokens of the JSB configs.
  # C4 C5 G5 E6 | C5 G5 E6 | ...: keys are pitch - 21.
  first = serial_frames.roll_to_tokens(jsb_quarter.load_rolls("train")[0])
  eof = serial_frames.EOF_ID
  assert first[:10].tolist() == [serial_frames.START_ID, 39, 51, 58, 67, eof,
                                 51, 58, 67, eof]
  # Padding decodes to nothing; a fixed frame count pads or cuts the roll.
  padded = serial_frames.pad_tokens([first], len(first) + 5)
  np.testing.assert_array_equal(serial_frames.tokens_to_roll(padded[0]),
                                jsb_quarter.load_rolls("train")[0])
  assert serial_frames.tokens_to_roll(first, 2).shape == (2, 88)
  with pytest.raises(ValueError, match="ascending"):
    serial_frames.tokens_to_roll([5, 3, eof])
  with pytest.raises(ValueError, match="config.data.max_tokens=787"):
    serial_frames.pad_tokens([np.zeros(788, np.int32)], 787)


def test_serial_nll_equals_a_hand_computation():
  # Two frames, {key 0, key 5} and the empty frame, then one padding target.
  eof, start = pianoroll.EOF_ID, pianoroll.START_ID
  tokens = np.array([[start, 0, 5, eof, eof, start]], np.int32)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1, 5, 90)).astype(np.float32)
  logits[0, :, start] = 100.0  # START is never allowed: must not count.
  logits[0, 1, 0] = 50.0  # After key 0, key 0 is not allowed.
  logits[0, 2, 3] = 30.0  # After key 5, key 3 is not allowed.
  logits[0, 4, :] = 50.0  # Padding target: must not count.
  z = logits[0].astype(np.float64)
  keys = np.arange(88)

  def nll(t, allowed, target):
    allowed = np.append(allowed, eof)
    return float(np.log(np.sum(np.exp(z[t, allowed]))) - z[t, target])

  expected = (nll(0, keys, 0) + nll(1, keys[1:], 5)  # Frame 0: keys 0, 5 ...
              + nll(2, keys[6:], eof)                # ... and its EOF.
              + nll(3, keys, eof))                   # Frame 1: EOF alone.
  sums = pianoroll.serial_nll_sums(jnp.asarray(logits), jnp.asarray(tokens))
  np.testing.assert_allclose(float(sums["nll_sum"]), expected, rtol=1e-5)
  assert float(sums["frame_sum"]) == 2.0 and float(sums["token_sum"]) == 4.0
  out = pianoroll.PianorollTask.summarize(jax.device_get(sums))
  np.testing.assert_allclose(out["nll"], expected / 2, rtol=1e-5)
  np.testing.assert_allclose(out["nll_per_token"], expected / 4, rtol=1e-5)
  # The masked logits get no gradient, and none is NaN.
  grads = jax.grad(lambda x: pianoroll.serial_nll_sums(x, tokens)["nll_sum"])(
      jnp.asarray(logits))
  assert np.all(np.isfinite(grads))
  assert float(grads[0, 0, start]) == 0.0 and float(grads[0, 1, 0]) == 0.0
  assert float(jnp.abs(grads[0, 4]).sum()) == 0.0


@pytest.mark.parametrize("frame_model", ["bernoulli", "serial"])
def test_transposition_shifts_whole_training_pieces(frame_model):
  config = load_config("jsb_lstm", data__frame_model=frame_model,
                       data__transpose=5, batch_size=8)
  task = pianoroll.PianorollTask(config, None)
  plain = pianoroll.PianorollTask(load_config("jsb_lstm", data__frame_model=frame_model,
                                              batch_size=8), None)
  shifted_batches = iter(task.create_train_dataset(""))
  plain_batches = iter(plain.create_train_dataset(""))
  shifts = []
  for _ in range(4):  # 32 pieces, in the same shuffled order.
    batch, ref = next(shifted_batches), next(plain_batches)
    for i in range(8):
      if frame_model == "bernoulli":
        np.testing.assert_array_equal(batch["mask"][i], ref["mask"][i])
        a, b = batch["frames"][i], ref["frames"][i]
        assert a.sum() == b.sum()
        shift = int(np.flatnonzero(a.any(0))[0] - np.flatnonzero(b.any(0))[0])
        np.testing.assert_array_equal(np.roll(b, shift, axis=-1), a)
      else:
        a, b = batch["tokens"][i], ref["tokens"][i]
        keys = b < pianoroll.NUM_KEYS
        np.testing.assert_array_equal(a[~keys], b[~keys])
        shift = int(a[keys][0] - b[keys][0])
        np.testing.assert_array_equal(a[keys], b[keys] + shift)
      shifts.append(shift)
  # Every shift within +-5 semitones, and not all the same.
  assert all(-5 <= s <= 5 for s in shifts) and len(set(shifts)) > 3
  # Evaluation reads the pieces as written.
  for key, value in task.eval_data("", "valid").items():
    np.testing.assert_array_equal(value, plain.eval_data("", "valid")[key])
  # No key is pushed off the 88: keys 10 and 86 leave room for shifts of
  # -10 .. +1 only, even with up to 12 semitones allowed.
  piece = {"frames": np.zeros((4, pianoroll.NUM_KEYS), np.uint8)}
  piece["frames"][:, [10, 86]] = 1
  transpose = pianoroll.RandomTranspose(12)
  shifts = set()
  for seed in range(100):
    out = transpose.random_map(piece, np.random.default_rng(seed))["frames"]
    keys = np.flatnonzero(out.any(0))
    assert len(keys) == 2 and keys[1] - keys[0] == 76
    shifts.add(int(keys[0]) - 10)
  assert shifts == set(range(-10, 2))


def test_frame_model_keys_are_checked_and_work_in_the_bernoulli_configs():
  config = load_config("jsb_lstm", data__frame_model="nade")
  with pytest.raises(ValueError, match="config.data.frame_model='nade'"):
    train.check_config(config)
  # The flag switches the Bernoulli config to serial frames.
  config = load_config("jsb_lstm", data__frame_model="serial")
  train.check_config(config)
  task = pianoroll.PianorollTask(config, None)
  assert task.model.vocab_size == pianoroll.SERIAL_VOCAB_SIZE
  config = load_config("jsb_transformer", data__frame_model="serial")
  with pytest.raises(ValueError, match="max_len=160 .*config.data.max_tokens"):
    train.check_config(config)
  # A piece longer than a window (the longest has 788 tokens) is evaluated
  # whole: padded to two windows of 699 input tokens (issue 27).
  config = load_config("jsb_lstm_serial", data__max_tokens=700)
  tokens = pianoroll.PianorollTask(config, None).eval_data("", "test")["tokens"]
  assert tokens.shape == (77, 1 + 2 * 699)
  # Distillation needs Bernoulli frames as written, and a weight in [0, 1].
  for overrides, match in (({"data__frame_model": "serial"}, "needs Bernoulli"),
                           ({"data__transpose": 2}, "do not mix"),
                           ({"distill_weight": 1.5}, "distill_weight=1.5")):
    config = load_config("jsb_lstm", distill_teachers="exports/a", **overrides)
    with pytest.raises(ValueError, match=match):
      train.check_config(config)


@pytest.mark.usefixtures("fewer_optimizations")
def test_serial_models_continue_from_their_carry():
  """A full pass over tokens equals one token at a time with the carry."""
  tokens = np.random.default_rng(0).integers(0, 90, (2, 6)).astype(np.int32)
  for name in ("jsb_lstm_serial", "jsb_transformer_serial"):
    task = pianoroll.PianorollTask(load_config(name), None)
    params = task.init_params(jax.random.PRNGKey(0))
    apply = jax.jit(task.model.apply)
    full, _ = apply({"params": params}, tokens)
    first, carry = apply({"params": params}, tokens[:, :1])
    steps = [first]
    for t in range(1, 6):
      logits, carry = apply({"params": params}, tokens[:, t:t + 1], carry=carry)
      steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5,
                               err_msg=name)
    assert full.shape == (2, 6, 90)


@pytest.mark.slow
def test_serial_smoke_trains_exports_evaluates_and_samples(tmp_path):
  cap = 3
  config = load_config("jsb_lstm_serial", num_train_steps=4, eval_every_steps=4,
                       checkpoint_every_steps=4, log_every_steps=2,
                       sample_every_steps=4, sample__max_notes_per_frame=cap)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  rows = log_rows(workdir)
  assert len(rows) == 4
  # Uniform over keys + EOF: a 4-note frame costs about 5 log(89) nats.
  assert all(0 < r["train/loss"] < 5 * np.log(90) + 5 for r in rows)
  assert sorted(os.listdir(os.path.join(workdir, "samples", "4"))) == [
      "sample_000.mid", "sample_000.png", "sample_001.mid", "sample_001.png"]

  # Every piece is padded to max_tokens; the eval batches (the last padded
  # with empty pieces) hold every valid frame exactly once.
  task = pianoroll.PianorollTask(config, None)
  eval_data = task.eval_data("", "valid")
  assert eval_data["tokens"].shape == (76, 788)
  batches = list(task.eval_batches(eval_data))
  assert len(batches) == -(-76 // config.batch_size)
  assert sum(int(np.sum(b["tokens"][:, 1:] == pianoroll.EOF_ID))
             for b in batches) == 4602

  bundle = str(tmp_path / "export")
  export.export(workdir, bundle, "best")
  valid = evaluate.evaluate(bundle, split="valid")
  test = evaluate.evaluate(bundle, split="test")
  assert (valid["frames"], valid["tokens"]) == (4602, 22489 - 76)
  assert test["frames"] == 4725
  assert 0 < valid["nll"] < 5 * np.log(90) + 5
  np.testing.assert_allclose(valid["nll_per_token"] * valid["tokens"],
                             valid["nll"] * valid["frames"], rtol=1e-5)
  # Serial and Bernoulli bundles read other data: no ensemble of the two.
  bernoulli = str(tmp_path / "bernoulli")
  train.train_and_evaluate(
      load_config("jsb_lstm", num_train_steps=1, eval_every_steps=1,
                  checkpoint_every_steps=1, sample_every_steps=0),
      str(tmp_path / "bernoulli_run"))
  export.export(str(tmp_path / "bernoulli_run"), bernoulli)
  with pytest.raises(ValueError, match="must share their task and data"):
    evaluate.evaluate(f"{bundle},{bernoulli}", split="valid")

  # Samples: keys ascending in each frame, at most `cap` of them, exactly
  # `length` frames and padding after.
  params = checkpoint.load_bundle(bundle).params
  length = 6
  tokens = np.asarray(pianoroll.sample_serial_tokens(
      task.model, params, jax.random.PRNGKey(0), num_samples=4, length=length,
      temperature=1.0, max_notes_per_frame=cap))
  assert tokens.shape == (4, length * (cap + 1))
  for row in tokens:
    eofs = np.flatnonzero(row == pianoroll.EOF_ID)
    assert len(eofs) == length
    assert np.all(row[eofs[-1] + 1:] == pianoroll.PAD_ID)
    for frame in np.split(row[:eofs[-1]], eofs[:-1] + 1):
      keys = frame[frame != pianoroll.EOF_ID]
      assert np.all(keys < 88) and len(keys) <= cap
      assert np.all(np.diff(keys) > 0)
  paths = sample_lib.sample(bundle, str(tmp_path / "samples"), num_samples=2,
                            length=length, seed=1)
  assert len(paths) == 2
  for path in paths:
    roll = pianoroll_rep.sequence_to_roll(note_seq.midi_file_to_note_sequence(path),
                                          1, jsb_quarter.MIN_PITCH, 88)
    assert roll.sum() > 0 and roll.shape[0] <= length
    assert roll.sum(1).max() <= cap


def test_a_too_long_sample_for_the_transformer_names_the_longest_allowed():
  config = load_config("jsb_transformer_serial", sample__max_notes_per_frame=4)
  task = pianoroll.PianorollTask(config, None)
  # 788 positions: the start token and 157 frames of up to 4 keys and EOF.
  with pytest.raises(errors.UserError, match=r"--length=200: sampling 200 frames takes "
                                             r"up to 1001 positions, and this model holds "
                                             r"max_len=788; allowed: --length up to 157"):
    task.sample(None, jax.random.PRNGKey(0), num_samples=1, length=200)
  with pytest.raises(errors.UserError, match=r"--top_k=5, --top_p=1.0, --primer: the "
                                             r"piano-roll task samples with --temperature"):
    task.write_samples(None, jax.random.PRNGKey(0), None, num_samples=1, length=4,
                       top_k=5)
