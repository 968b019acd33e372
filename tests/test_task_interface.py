"""The task interface (`tasks.base`): every registered task satisfies the
`Task` protocol the loop and the tools use, the one-network tasks share
`SingleNetworkTask`, and the modules split out of the tasks (state, optimizer,
checks, sample writing, the serial-frames codec) do what the tasks rely on."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data.representations import serial_frames
from musegen_jax.tasks import base
from musegen_jax.tasks import checks
from musegen_jax.tasks import samples
from musegen_jax.tasks import state as state_lib

from conftest import load_config

# (config, task class name, one network?, scores distributions?)
CASES = [("lstm", "LanguageModelTask", True, True),
         ("vae", "VAETask", True, False),
         ("jsb_lstm", "PianorollTask", True, True),
         ("gan", "GANTask", False, False)]


def _task(name: str, **overrides):
  config = load_config(name, **overrides)
  return tasks.create_task(
      config, train.load_representation(config, train.resolve_data_dir(config)))


@pytest.mark.parametrize("name,cls,single,scores", CASES)
def test_every_task_satisfies_the_protocol(name, cls, single, scores):
  task = _task(name)
  assert type(task).__name__ == cls
  assert isinstance(task, base.Task)
  members = [m for m in dir(base.Task) if not m.startswith("_")]
  members += list(base.Task.__annotations__)
  for member in members:
    assert hasattr(task, member), f"{cls} lacks {member}"
  assert isinstance(task.valid_metric, str) and task.progress_keys
  assert isinstance(task, base.SingleNetworkTask) == single
  assert isinstance(task, base.ScoresDistributions) == scores


def test_the_classifier_satisfies_the_protocol():
  # Its classes come from a labelled dataset; given here, on the chorales.
  task = _task("style_classifier", styles=("a", "b"))
  assert type(task).__name__ == "ClassifyTask"
  for member in [m for m in dir(base.Task) if not m.startswith("_")]:
    assert hasattr(task, member), f"ClassifyTask lacks {member}"
  assert isinstance(task, base.Task) and isinstance(task, base.SingleNetworkTask)
  assert not isinstance(task, base.ScoresDistributions)


def test_the_registry_names_the_single_network_subclasses():
  from musegen_jax.tasks import classify, gan, lm, pianoroll, vae
  for cls in (lm.LanguageModelTask, pianoroll.PianorollTask, vae.VAETask,
              classify.ClassifyTask):
    assert issubclass(cls, base.SingleNetworkTask)
  assert not issubclass(gan.GANTask, base.SingleNetworkTask)
  assert set(tasks.TASKS) == {"lm", "pianoroll", "gan", "vae", "classify"}


def test_a_single_network_task_needs_its_data_and_decoding():
  class LossOnly(base.SingleNetworkTask):
    valid_metric = "loss"

    def init_inputs(self):
      return jnp.zeros((1, 4), jnp.int32)

  with pytest.raises(TypeError, match="abstract"):
    LossOnly(load_config("lstm"), None, None)  # pylint: disable=abstract-class-instantiated


def test_the_single_network_state_keeps_the_flax_tree():
  task = _task("lstm")
  state = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
  assert isinstance(state, state_lib.TrainState)
  assert state.ema_params is None  # ema_decay 0: the tree of plain flax.
  assert task.learning_rate_fn(0) == 0.0  # Warmup starts from zero.
  assert task.eval_params(state) is state.params


def test_checks_name_the_key():
  with pytest.raises(ValueError, match=r"config.a.b=0 must be > 0"):
    checks.check_ranges(positive={"a.b": 0})
  with pytest.raises(ValueError, match=r"config.rate=1.0 must be in \[0, 1\)"):
    checks.check_ranges(fractions={"rate": 1.0})
  with pytest.raises(ValueError, match="config.model.name='gru'"):
    checks.check_model_name(load_config("lstm", model__name="gru"), ("lstm",))


def test_sample_writers_name_their_files_in_order(tmp_path):
  import note_seq
  ns = note_seq.NoteSequence()
  ns.notes.add(pitch=60, velocity=80, start_time=0.0, end_time=0.5)
  ns.total_time = 0.5
  midi = samples.write_midi_samples([ns, ns], str(tmp_path / "midi"),
                                    ["a", "b"])
  assert [os.path.basename(p) for p in midi] == ["sample_000.mid", "sample_001.mid"]
  assert all(os.path.isfile(p[:-4] + ".png") for p in midi)
  assert samples.midi_step_samples(midi)[1] == {
      "midi": midi[1], "image": midi[1][:-4] + ".png"}
  clips = np.sin(np.linspace(0, 100, 2 * 1024)).reshape(2, 1024).astype(np.float32)
  wavs = samples.write_audio_samples(clips, 16000, str(tmp_path / "wav"), "t: ")
  assert [os.path.basename(w["wav"]) for w in wavs] == ["sample_000.wav",
                                                         "sample_001.wav"]
  assert all(os.path.isfile(w["image"]) for w in wavs)


def test_the_serial_codec_grammar():
  allowed = np.asarray(serial_frames.allowed_next(
      jnp.asarray([serial_frames.START_ID, 10, serial_frames.EOF_ID, 87])))
  assert allowed.shape == (4, serial_frames.SERIAL_VOCAB_SIZE)
  assert not allowed[:, serial_frames.START_ID].any()
  assert allowed[:, serial_frames.EOF_ID].all()
  assert allowed[0, :88].all() and allowed[2, :88].all()
  assert not allowed[1, :11].any() and allowed[1, 11:88].all()
  assert not allowed[3, :88].any()
  roll = np.zeros((3, 88), np.uint8)
  roll[0, [3, 40]] = 1
  roll[2, 87] = 1
  tokens = serial_frames.roll_to_tokens(roll)
  assert tokens.tolist() == [serial_frames.START_ID, 3, 40, serial_frames.EOF_ID,
                             serial_frames.EOF_ID, 87, serial_frames.EOF_ID]
  np.testing.assert_array_equal(serial_frames.tokens_to_roll(tokens), roll)
