"""Scale-out on 8 forced CPU devices: gradient accumulation, the (data, fsdp)
mesh with sharded parameters, pmap, and checkpoints moved between meshes.

Every comparison runs the same global batches; randomness that differs per
example between layouts (dropout, phase shuffle) is off, so the updates agree
up to float summation order.
"""

from __future__ import annotations

import contextlib
import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from musegen_jax import checkpoint
from musegen_jax import export as export_lib
from musegen_jax import parallel
from musegen_jax.parallel import pmap
from musegen_jax import tasks
from musegen_jax import train

from conftest import fewer_xla_optimizations, load_config, tiny_lstm_config

STEPS = 3


def _lstm(**overrides):
  return tiny_lstm_config(**{"model__dropout_rate": 0.0, "warmup_steps": 0,
                             "learning_rate": 1e-2, **overrides})


def _gan(**overrides):
  return load_config("gan", **{"model__phase_shuffle": 0, **overrides})


def _roll(**overrides):
  """The JSB piano-roll task at test size, dropout off."""
  return load_config("jsb_lstm", **{"model__dropout_rate": 0.0,
                                    "input_dropout_rate": 0.0, "warmup_steps": 0,
                                    "data__max_frames": 32, **overrides})


def _task(config):
  task = tasks.create_task(config, train.load_representation(config, ""))
  if config.task == "gan":
    # Plain SGD for both networks instead of Adam. Adam divides each update
    # by the gradient's running RMS, so float summation-order differences in
    # near-zero gradients become differences of up to a whole step; with SGD
    # they stay at rounding level, and the GAN's comparisons can be tight
    # while compiling with fewer XLA optimizations (the step: 12 s -> 7 s).
    # What these tests check (batches split, accumulated, sharded) is the
    # same for any optimizer, and SGD also sees a wrongly scaled gradient.
    task.g_tx = task.d_tx = optax.sgd(config.learning_rate)
  return task


def _batches(config, task, steps=STEPS):
  rng = np.random.default_rng(0)
  if config.task == "lm":
    tokens = rng.integers(0, task.vocab_size,
                          (steps, config.batch_size, config.data.seq_len + 1))
    tokens[:, :, -5:] = task.pad_id  # Padding targets weigh nothing.
    tokens[:, 0, 10:] = task.pad_id  # Examples of unequal weight.
    return [{"tokens": t.astype(np.int32)} for t in tokens]
  if config.task == "pianoroll":
    frames = (rng.random((steps, config.batch_size, config.data.max_frames, 88))
              < 0.05).astype(np.uint8)
    mask = np.ones(frames.shape[:3], np.uint8)
    mask[:, 0, 20:] = 0  # Pieces of unequal length.
    return [{"frames": f, "mask": m} for f, m in zip(frames, mask)]
  shape = (steps, config.batch_size, config.gan.critic_steps, config.data.slice_len, 1)
  return [{"audio": a} for a in rng.uniform(-1, 1, shape).astype(np.float32)]


def _train_jit(config, devices=None):
  """STEPS jit steps on a mesh of `devices` (default all) with config.mesh.fsdp."""
  task = _task(config)
  mesh = train.create_mesh(config, devices)
  state = train.create_train_state(task, config, mesh, jax.random.PRNGKey(0))
  step, _ = train.jit_steps(task, mesh)
  for batch in _batches(config, task):
    state, metrics = step(state, parallel.global_batch(batch, mesh),
                          jax.random.PRNGKey(1))
    assert float(metrics["nonfinite"]) == 0
  return state


def _train_pmap(config):
  task = _task(config)
  mesh = train.create_mesh(config)
  state = parallel.replicate(
      train.create_train_state(task, config, mesh, jax.random.PRNGKey(0)))
  step = pmap.train_step(task)
  for batch in _batches(config, task):
    state, metrics = step(state, parallel.device_batch(batch), jax.random.PRNGKey(1))
    assert float(parallel.unreplicate(metrics)["nonfinite"]) == 0
  return parallel.unreplicate(state)


def _assert_close(a, b, rtol=2e-4, atol=2e-6):
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(
      jax.device_get(b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _params(state):
  return (state.params if hasattr(state, "params")
          else (state.g_params, state.d_params, state.ema_params))


def _compiling(make):
  """The GAN's step takes most of these tests' time to compile; with SGD
  (see `_task`) it compiles with fewer optimizations."""
  return fewer_xla_optimizations() if make is _gan else contextlib.nullcontext()


@pytest.mark.slow
@pytest.mark.parametrize("make", [_lstm, _gan, _roll], ids=["lstm", "gan", "pianoroll"])
def test_grad_accumulation_equals_one_big_batch(make):
  config = make(batch_size=16)
  with _compiling(make):
    reference = _params(_train_jit(config))
    _assert_close(_params(_train_jit(make(batch_size=16, grad_accum_steps=2))),
                  reference)
  # The parameters really moved: the comparison is not of initial values.
  init = _params(train.create_train_state(
      _task(config), config, train.create_mesh(config), jax.random.PRNGKey(0)))
  assert not np.allclose(jax.tree.leaves(init)[0], jax.tree.leaves(reference)[0])


@pytest.mark.slow
@pytest.mark.usefixtures("fewer_optimizations")
def test_fsdp_meshes_equal_one_device_and_shard_the_parameters():
  single = _params(_train_jit(_lstm(), jax.devices()[:1]))
  for fsdp in (1, 2, 4):
    state = _train_jit(_lstm(mesh__fsdp=fsdp))
    _assert_close(_params(state), single)
    embedding = state.params["embed"]["embedding"]  # ("vocab", "embed")
    if fsdp > 1:
      assert embedding.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
      assert embedding.addressable_shards[0].data.shape == (
          embedding.shape[0], embedding.shape[1] // fsdp)
      # The Adam moments follow their parameters.
      mu = state.opt_state[1][0].mu["embed"]["embedding"]
      assert mu.sharding.spec == embedding.sharding.spec
    else:
      assert embedding.sharding.is_fully_replicated


@pytest.mark.slow
@pytest.mark.usefixtures("fewer_optimizations")
def test_fsdp_gan_equals_one_device_and_falls_back_for_odd_sizes():
  config = _gan(mesh__fsdp=4)
  single = _params(_train_jit(_gan(), jax.devices()[:1]))
  state = _train_jit(config)
  _assert_close(_params(state), single)
  spec = state.g_params["upconv_0"]["kernel"].sharding.spec  # conv_out = 32.
  assert spec == jax.sharding.PartitionSpec(None, None, "fsdp")
  # The last layer has one output channel: it stays whole.
  assert state.g_params["upconv_4"]["kernel"].sharding.is_fully_replicated
  assert state.ema_params["upconv_0"]["kernel"].sharding.spec == spec


@pytest.mark.usefixtures("fewer_optimizations")
def test_fsdp_pianoroll_equals_one_device():
  single = _params(_train_jit(_roll(), jax.devices()[:1]))
  state = _train_jit(_roll(mesh__fsdp=2))
  _assert_close(_params(state), single)
  assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(state.params))


@pytest.mark.slow
@pytest.mark.parametrize("make", [_lstm, _gan, _roll], ids=["lstm", "gan", "pianoroll"])
def test_pmap_equals_jit(make):
  config = make(batch_size=16, grad_accum_steps=2)
  with _compiling(make):
    _assert_close(_params(_train_pmap(make(batch_size=16, grad_accum_steps=2,
                                           parallelism="pmap"))),
                  _params(_train_jit(config)))


@pytest.mark.slow
def test_checkpoint_moves_from_8_devices_fsdp_2_to_4_devices(tmp_path):
  config = _lstm(mesh__fsdp=2)
  state = _train_jit(config)
  path = str(tmp_path / "state")
  saver = ocp.StandardCheckpointer()
  saver.save(path, state)
  saver.wait_until_finished()

  other = _lstm(mesh__fsdp=1)
  task = _task(other)
  mesh = train.create_mesh(other, jax.devices()[:4])
  # The restore target: shapes, dtypes and the new mesh's shardings.
  restored = saver.restore(path, train.abstract_train_state(task, mesh))
  _assert_close(restored, state, rtol=0, atol=0)
  leaf = restored.params["embed"]["embedding"]
  assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated
  # And training goes on there.
  step, _ = train.jit_steps(task, mesh)
  batch = _batches(other, task, 1)[0]
  restored, metrics = step(restored, parallel.global_batch(batch, mesh),
                           jax.random.PRNGKey(1))
  assert int(restored.step) == STEPS + 1 and float(metrics["nonfinite"]) == 0


def test_fsdp_run_exports_whole_parameters(tmp_path):
  workdir = str(tmp_path / "run")
  state = train.train_and_evaluate(
      _lstm(mesh__fsdp=4, num_train_steps=4, checkpoint_every_steps=4), workdir)
  assert "fsdp" in str(state.params["lstm_0"]["w_hh"].sharding.spec)
  bundle = checkpoint.load_bundle(export_lib.export(workdir, str(tmp_path / "export")))
  _assert_close(bundle.params, state.params, rtol=0, atol=0)
  assert all(isinstance(x, np.ndarray) or x.sharding.is_fully_replicated
             for x in jax.tree.leaves(bundle.params))


def test_pmap_run_trains_and_resumes_exactly(tmp_path):
  config = _lstm(parallelism="pmap", num_train_steps=6, checkpoint_every_steps=3,
                 log_every_steps=1)
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  train.train_and_evaluate(config, str(tmp_path / "cut"), stop_at_step=3)
  resumed = train.train_and_evaluate(config, str(tmp_path / "cut"))
  _assert_close(resumed.params, full.params, rtol=0, atol=0)
  assert os.listdir(tmp_path / "cut" / "checkpoints")


@pytest.mark.parametrize("overrides, message", [
    ({"mesh__fsdp": 3}, r"config.mesh.fsdp=3 .*number of devices \(8\)"),
    ({"batch_size": 8, "grad_accum_steps": 2},
     r"batch_size=8 .*grad_accum_steps \(2\) x the number of devices \(8\) = 16"),
    ({"grad_accum_steps": 0}, r"grad_accum_steps=0 must be >= 1"),
    ({"parallelism": "pmap", "mesh__fsdp": 2}, r"config.mesh.fsdp=2 needs"),
    ({"logical_axis_rules": [("embed", "fsdp", "x")]}, r"logical_axis_rules entry"),
])
def test_mesh_and_batch_errors_fail_before_compile(overrides, message):
  with pytest.raises(ValueError, match=message):
    train.check_config(_lstm(**overrides))


def test_gan_batchnorm_rejects_accumulation():
  with pytest.raises(ValueError, match="use_batchnorm"):
    train.check_config(_gan(model__use_batchnorm=True, batch_size=16,
                            grad_accum_steps=2))
