"""A NaN loss is never applied: the run stops naming the step, or skips and counts.

The NaN comes from a real batch: a token id outside the vocabulary makes the
first layer's table lookup produce NaN (jnp.take's "fill" mode).
"""

from __future__ import annotations

import dataclasses
import os

import grain
import jax
import numpy as np
import pytest

from musegen_jax import parallel
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import pipeline

from conftest import log_rows, tiny_lstm_config


def _tiny(**overrides):
  return tiny_lstm_config(**{"num_train_steps": 12, "log_every_steps": 4,
                             "checkpoint_every_steps": 5, **overrides})


@dataclasses.dataclass
class PoisonBatch(grain.transforms.Map):
  """Puts an out-of-vocabulary token into the `at`-th batch (1-based)."""
  at: int
  seen: int = 0

  def map(self, batch):
    self.seen += 1
    if self.seen == self.at:
      batch = {"tokens": batch["tokens"].copy()}
      batch["tokens"][0, 5] = 390
    return batch


def _poison_at(monkeypatch, at):
  from musegen_jax.tasks import lm
  original = lm.LanguageModelTask.create_train_dataset
  monkeypatch.setattr(lm.LanguageModelTask, "create_train_dataset",
                      lambda self, *args: original(self, *args).map(PoisonBatch(at)))


def test_a_nonfinite_update_is_not_applied_and_is_counted(jsb_data_dir):
  config = _tiny()
  rep = pipeline.load_representation("performance", jsb_data_dir)
  task = tasks.create_task(config, rep)
  mesh = parallel.create_mesh()
  state = train.create_train_state(task, config, mesh, jax.random.PRNGKey(0))
  step, _ = train.jit_steps(task, mesh)
  tokens = np.random.default_rng(0).integers(2, 390, (16, 33)).astype(np.int32)
  bad = tokens.copy()
  bad[3, 7] = 390
  before = jax.device_get(state)
  state, metrics = step(state, parallel.global_batch({"tokens": bad}, mesh),
                        jax.random.PRNGKey(1))
  assert not np.isfinite(float(metrics["loss"]))
  assert float(metrics["nonfinite"]) == 1.0
  after = jax.device_get(state)
  assert int(after.step) == 1 and int(after.skipped_updates) == 1
  for a, b in zip(jax.tree.leaves((before.params, before.opt_state)),
                  jax.tree.leaves((after.params, after.opt_state))):
    np.testing.assert_array_equal(a, b)
  # Good batches update again (the optimizer's own count did not advance on
  # the skipped one, so its warmup starts at a zero learning rate: two steps).
  for _ in range(2):
    state, metrics = step(state, parallel.global_batch({"tokens": tokens}, mesh),
                          jax.random.PRNGKey(1))
    assert float(metrics["nonfinite"]) == 0.0
  assert int(state.skipped_updates) == 1 and int(state.step) == 3
  assert not np.array_equal(jax.tree.leaves(jax.device_get(state.params))[0],
                            jax.tree.leaves(after.params)[0])


def test_stop_mode_names_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch):
  _poison_at(monkeypatch, 7)
  with pytest.raises(FloatingPointError,
                     match=r"at step 7 .*last good checkpoint is step 5"):
    train.train_and_evaluate(_tiny(), str(tmp_path))
  # Nothing written after the bad step: step 5 is the newest checkpoint.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]


def test_skip_mode_goes_on_and_counts(tmp_path, monkeypatch):
  _poison_at(monkeypatch, 7)
  state = train.train_and_evaluate(_tiny(nonfinite="skip"), str(tmp_path))
  assert int(state.step) == 12 and int(state.skipped_updates) == 1
  flags = {r["step"]: r["train/nonfinite"] for r in log_rows(tmp_path)}
  assert [s for s, v in flags.items() if v] == [7]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_parameter_average_follows_applied_updates_only(jsb_data_dir):
  """With config.ema_decay, each applied update moves the average by
  (1 - decay) towards the new parameters; a skipped one leaves it."""
  decay = 0.9
  config = _tiny(ema_decay=decay)
  rep = pipeline.load_representation("performance", jsb_data_dir)
  task = tasks.create_task(config, rep)
  mesh = parallel.create_mesh()
  state = train.create_train_state(task, config, mesh, jax.random.PRNGKey(0))
  step, _ = train.jit_steps(task, mesh)
  tokens = np.random.default_rng(0).integers(2, 390, (16, 33)).astype(np.int32)
  bad = tokens.copy()
  bad[3, 7] = 390
  start = jax.device_get(state)
  for leaf, avg in zip(jax.tree.leaves(start.params), jax.tree.leaves(start.ema_params)):
    np.testing.assert_array_equal(leaf, avg)
  averages = jax.tree.leaves(start.ema_params)
  for batch in (tokens, tokens, bad, tokens):
    state, metrics = step(state, parallel.global_batch({"tokens": batch}, mesh),
                          jax.random.PRNGKey(1))
    now = jax.device_get(state)
    if float(metrics["nonfinite"]) == 0.0:
      averages = [decay * a + (1 - decay) * p
                  for a, p in zip(averages, jax.tree.leaves(now.params))]
    for expected, avg in zip(averages, jax.tree.leaves(now.ema_params)):
      np.testing.assert_allclose(avg, expected, rtol=1e-5, atol=1e-7)
  assert int(now.skipped_updates) == 1
  # Evaluation, samples and export use the average, not the raw parameters.
  assert task.eval_params(state) is state.ema_params
  assert not np.array_equal(jax.tree.leaves(now.ema_params)[0],
                            jax.tree.leaves(now.params)[0])
  with pytest.raises(ValueError, match=r"config.ema_decay=1.0 must be in \[0, 1\)"):
    task2 = tasks.create_task(_tiny(ema_decay=1.0), rep)
    task2.init_state(jax.random.PRNGKey(0))
