"""Fine-tuning from an export bundle (`config.init_from`, `init_from_keys`)
and frozen parameters (`config.freeze`): musegen_jax/warm_start.py.

One tiny LSTM is pretrained on the bundled chorales and exported once for
the module; the fine-tuning corpus is a few chorales transposed up a fourth,
written as MIDI files and prepared as a user's corpus would be.
"""

from __future__ import annotations

import os
import shutil

import jax
import note_seq
import numpy as np
import pytest

from musegen_jax import errors
from musegen_jax import export as export_lib
from musegen_jax import prepare as prepare_lib
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax import warm_start
from musegen_jax.data import jsb

from conftest import load_config, log_rows, tiny_lstm_config

# The pretraining run and every fine-tune: the conftest LSTM (1 x 32).
_PRETRAIN_STEPS = 150
_FINETUNE_STEPS = 60
_TRANSPOSE = 5  # Semitones: the fine-tuning corpus is the chorales up a fourth.


def _config(**overrides):
  settings = dict(learning_rate=3e-3, warmup_steps=5, num_eval_batches=4,
                  eval_every_steps=1000, checkpoint_every_steps=1000)
  settings.update(overrides)
  return tiny_lstm_config(**settings)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  """The tiny LSTM trained on the bundled chorales, exported."""
  root = tmp_path_factory.mktemp("pretrained")
  workdir, output = str(root / "run"), str(root / "export")
  train.train_and_evaluate(_config(num_train_steps=_PRETRAIN_STEPS), workdir)
  return export_lib.export(workdir, output)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A small MIDI corpus (train/ and valid/ folders), prepared."""
  root = tmp_path_factory.mktemp("corpus")
  counts = {"train": 24, "valid": 6, "test": 2}
  for split, count in counts.items():
    os.makedirs(root / "midi" / split)
    for i, ns in enumerate(jsb.load_jsb(split)[:count]):
      for note in ns.notes:
        note.pitch += _TRANSPOSE
      note_seq.sequence_proto_to_midi_file(
          ns, str(root / "midi" / split / f"{split}_{i:02d}.mid"))
  out = str(root / "prepared")
  prepare_lib.prepare(str(root / "midi"), out, num_workers=0, num_shards=1,
                      progress=False)
  return out


def _fresh_state(config):
  """The task and its initial train state for `config`, as the loop makes them."""
  data_dir = train.resolve_data_dir(config)
  task = tasks.create_task(config, train.load_representation(config, data_dir))
  mesh = train.create_mesh(config)
  state = train.create_train_state(task, config, mesh,
                                   jax.random.split(jax.random.PRNGKey(config.seed), 3)[0])
  return task, mesh, state, data_dir


def _valid_loss(config, state_fn=None):
  """The valid loss the loop's eval gives for `config`'s step-0 state
  (`state_fn(state)`: e.g. the warm start)."""
  task, mesh, state, data_dir = _fresh_state(config)
  if state_fn is not None:
    state = state_fn(state)
  _, eval_step = train.jit_steps(task, mesh)
  return train.evaluate(eval_step, task, task.eval_params(state),
                        task.eval_data(data_dir), mesh,
                        config.num_eval_batches)["loss"]


def _flat(tree):
  return {k: np.asarray(v) for k, v in warm_start.flatten(tree).items()}


@pytest.mark.slow
def test_fine_tuning_lowers_the_valid_loss_and_beats_training_from_scratch(
    tmp_path, bundle, corpus, capsys):
  """The issue's test: an LSTM bundle fine-tuned on a small MIDI corpus."""
  warm = _config(num_train_steps=_FINETUNE_STEPS,
                 eval_every_steps=_FINETUNE_STEPS, data__dir=corpus,
                 init_from=bundle)
  scratch = _config(num_train_steps=_FINETUNE_STEPS,
                    eval_every_steps=_FINETUNE_STEPS, data__dir=corpus)
  loaded = warm_start.load_source(warm)
  warm_start_0 = _valid_loss(warm, lambda s: warm_start.apply(s, loaded, warm)[0])
  scratch_0 = _valid_loss(scratch)

  train.train_and_evaluate(warm, str(tmp_path / "warm"))
  out = capsys.readouterr().out
  assert f"init_from={bundle}: copied 6 parameters (" in out
  assert "; fresh: 0" in out
  train.train_and_evaluate(scratch, str(tmp_path / "scratch"))
  (warm_n,) = [r["valid/loss"] for r in log_rows(tmp_path / "warm", "valid")]
  (scratch_n,) = [r["valid/loss"] for r in log_rows(tmp_path / "scratch", "valid")]
  print(f"valid loss on the transposed corpus: warm start {warm_start_0:.4f} "
        f"-> {warm_n:.4f} after {_FINETUNE_STEPS} steps; from scratch "
        f"{scratch_0:.4f} -> {scratch_n:.4f}")
  assert warm_n < warm_start_0 - 0.05
  assert warm_start_0 < scratch_0 - 1.0  # ln(390) = 5.97 from scratch.
  assert warm_n < scratch_n - 0.3


def test_copied_parameters_equal_the_bundles_and_the_average_starts_there(
    bundle, jsb_data_dir):
  config = _config(ema_decay=0.99, init_from=bundle)
  loaded = warm_start.load_source(config)
  _, _, state, _ = _fresh_state(config)
  state, report = warm_start.apply(state, loaded, config)
  assert sorted(report.copied) == sorted(_flat(loaded.params))
  assert report.fresh == [] and report.unused == []
  theirs = _flat(loaded.params)
  for field in ("params", "ema_params"):
    ours = _flat(getattr(state, field))
    assert ours.keys() == theirs.keys()
    for path, value in ours.items():
      np.testing.assert_array_equal(value, theirs[path], err_msg=path)
  # Laid out as the fresh state was, and not one buffer for both fields.
  leaf = state.params["lstm_0"]["w_ih"]
  assert len(leaf.sharding.device_set) == jax.device_count()
  assert leaf is not state.ema_params["lstm_0"]["w_ih"]


def test_a_new_vocabulary_keeps_embedding_and_head_fresh(bundle, jsb_data_dir):
  config = _config(init_from=bundle)
  with config.unlocked():
    config.data.performance = {"num_velocity_bins": 8}  # 390 -> 366 tokens.
  loaded = warm_start.load_source(config)
  _, _, fresh, _ = _fresh_state(config)
  before = _flat(fresh.params)
  state, report = warm_start.apply(fresh, loaded, config)
  assert sorted(report.copied) == ["lstm_0/bias", "lstm_0/w_hh", "lstm_0/w_ih"]
  assert dict(report.fresh) == {"embed/embedding": "[366,16] vs bundle [390,16]",
                                "head/bias": "[366] vs bundle [390]",
                                "head/kernel": "[32,366] vs bundle [32,390]"}
  after, theirs = _flat(state.params), _flat(loaded.params)
  for path in after:
    expected = theirs[path] if path in report.copied else before[path]
    np.testing.assert_array_equal(after[path], expected, err_msg=path)
  line = report.summary("E")
  assert line.startswith("init_from=E: copied 3 parameters (lstm_0/bias, ")
  assert "fresh: 3 (embed/embedding [366,16] vs bundle [390,16], " in line
  assert "\n" not in line


def test_init_from_keys_copies_only_the_matching_paths(bundle, jsb_data_dir):
  config = _config(init_from=bundle, init_from_keys="^lstm_0/w_")
  loaded = warm_start.load_source(config)
  _, _, state, _ = _fresh_state(config)
  _, report = warm_start.apply(state, loaded, config)
  assert sorted(report.copied) == ["lstm_0/w_hh", "lstm_0/w_ih"]
  assert ("head/kernel", "not matched by init_from_keys") in report.fresh


@pytest.mark.slow
def test_freeze_keeps_matching_parameters_bit_identical(tmp_path, bundle):
  """Frozen parameters (weight decay on) stay the bundle's to the bit; the
  others move; the parameter average of a frozen one stays at its value (up
  to the rounding of decay * avg + (1 - decay) * param: 2e-7 here)."""
  config = _config(num_train_steps=8, init_from=bundle, weight_decay=0.1,
                   ema_decay=0.9, freeze="^embed/|^lstm_0/w_")
  state = train.train_and_evaluate(config, str(tmp_path))
  theirs = _flat(warm_start.load_source(config).params)
  ours, average = _flat(state.params), _flat(state.ema_params)
  for path in ("embed/embedding", "lstm_0/w_hh", "lstm_0/w_ih"):
    np.testing.assert_array_equal(ours[path], theirs[path], err_msg=path)
    np.testing.assert_allclose(average[path], theirs[path], rtol=1e-6,
                               atol=1e-7, err_msg=path)
  for path in ("lstm_0/bias", "head/kernel", "head/bias"):
    assert not np.array_equal(ours[path], theirs[path]), path
  # The frozen parameters have no Adam moments in the optimizer state.
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state))
  trained = sum(ours[p].size for p in ("lstm_0/bias", "head/kernel", "head/bias"))
  assert moments == 2 * trained + 2  # mu, nu; Adam's and the schedule's counts.


@pytest.mark.slow
def test_a_resumed_fine_tune_ignores_init_from_and_repeats_the_losses(
    tmp_path, bundle, capsys):
  """Once the run has saved it resumes from its own checkpoint: the bundle
  (deleted here) is not read again, and the losses are those of a run
  never stopped."""
  copy = str(tmp_path / "bundle")
  shutil.copytree(bundle, copy)
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  config = _config(num_train_steps=12, init_from=copy, freeze="^embed/")
  train.train_and_evaluate(config, full)
  train.train_and_evaluate(config, cut, stop_at_step=5)
  shutil.rmtree(copy)
  capsys.readouterr()
  train.train_and_evaluate(config, cut)
  out = capsys.readouterr().out
  assert "Resumed from step 5" in out and "init_from=" not in out
  losses = lambda w: {r["step"]: r["train/loss"] for r in log_rows(w)}
  assert losses(cut) == losses(full)  # Bit for bit, every step.
  # Its checkpoints hold no moments for the frozen parameters: another
  # freeze is refused before they are read (or taken for damaged ones).
  with pytest.raises(errors.UserError,
                     match=r"config.freeze='', but the checkpoints in this "
                           r"workdir were trained with freeze='\^embed/'"):
    train.train_and_evaluate(_config(num_train_steps=14), cut)
  assert sorted(os.listdir(os.path.join(cut, "checkpoints"))) == ["12", "5"]


# --- refusals ------------------------------------------------------------------


def _refused(tmp_path, config, match, error=errors.UserError):
  workdir = str(tmp_path / "run")
  with pytest.raises(error, match=match) as info:
    train.train_and_evaluate(config, workdir)
  assert "\n" not in str(info.value)
  return workdir


def test_a_missing_bundle_is_named_before_the_workdir_is_made(tmp_path):
  missing = str(tmp_path / "nowhere")
  workdir = _refused(tmp_path, _config(init_from=missing),
                     f"--config.init_from={missing}: no such bundle",
                     errors.MissingInputError)
  assert not os.path.exists(workdir)


def test_a_folder_that_is_no_bundle_is_named_by_the_key(tmp_path):
  _refused(tmp_path, _config(init_from=str(tmp_path)),
           f"--config.init_from={tmp_path} is not an export bundle",
           errors.MissingInputError)


def test_a_bundle_of_another_model_is_refused_naming_both(tmp_path, bundle):
  config = load_config("transformer", init_from=bundle)
  workdir = _refused(tmp_path, config,
                     r"is a lm/lstm bundle; this run trains lm/transformer")
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("key, value, match", [
    ("freeze", "head/(", r"config.freeze='head/\(' is not a regular expression"),
    ("init_from_keys", "[", r"config.init_from_keys='\[' is not a regular"),
    ("checkpoint_every_minutes", -1.0,
     r"config.checkpoint_every_minutes=-1.0 must be >= 0"),
])
def test_bad_values_fail_before_the_workdir_is_made(tmp_path, bundle, key,
                                                    value, match):
  workdir = _refused(tmp_path, _config(init_from=bundle, **{key: value}), match)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize("key", ["freeze", "init_from_keys"])
def test_a_pattern_matching_no_parameter_is_refused(tmp_path, bundle, key):
  _refused(tmp_path, _config(init_from=bundle, **{key: "^decoder/"}),
           rf"config.{key}='\^decoder/' matches no parameter; the model's "
           r"parameters are embed/embedding, head/bias")


def test_freeze_is_refused_for_the_gan(tmp_path):
  _refused(tmp_path, load_config("gan", freeze="^conv"),
           r"config.freeze='\^conv': freezing parameters is not supported "
           r"for task 'gan'")
