"""Checkpoint retention and export bundles (real orbax, tiny pytrees)."""

from __future__ import annotations

import json
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from musegen_jax import checkpoint

from conftest import load_config


def _iterator():
  return iter(grain.MapDataset.range(100).seed(0).shuffle().to_iter_dataset())


def test_keeps_the_newest_and_the_best_by_valid_loss(tmp_path):
  manager = checkpoint.create_manager(str(tmp_path), keep=2)
  it = _iterator()
  valid = {10: 3.0, 20: 1.0, 30: 2.0, 40: None, 50: 2.5}
  for step, loss in valid.items():
    next(it)
    checkpoint.save(manager, step, {"w": jnp.full((3,), step, jnp.float32)}, it,
                    valid_loss=loss, force=True)
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [20, 40, 50]  # best (20) + newest two.
  assert checkpoint.best_step(manager) == 20
  abstract = checkpoint.with_sharding(
      jax.eval_shape(lambda: {"w": jnp.zeros((3,), jnp.float32)}),
      jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  fresh = _iterator()
  state, step = checkpoint.restore_latest(manager, abstract, fresh)
  assert step == 50
  np.testing.assert_array_equal(np.asarray(state["w"]), [50.0] * 3)
  assert next(fresh) == next(it)  # The data position came back too.
  manager.close()
  # After a restart the best is still known, and still kept.
  manager = checkpoint.create_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 60, state, fresh, force=True)
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [20, 50, 60]
  assert checkpoint.best_step(manager) == 20
  manager.close()


def test_bundle_round_trip_and_clear_errors(tmp_path):
  config = load_config("lstm")
  params = {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  rep = {"name": "performance", "settings": {"steps_per_second": 100}}
  out = checkpoint.export_bundle(str(tmp_path / "b"), params=params, config=config,
                                 representation=rep, step=7)
  bundle = checkpoint.load_bundle(out)
  assert bundle.step == 7 and bundle.representation == rep
  assert isinstance(bundle.config, ml_collections.ConfigDict)
  assert bundle.config.model.hidden_size == config.model.hidden_size
  np.testing.assert_array_equal(np.asarray(bundle.params["dense"]["kernel"]),
                                params["dense"]["kernel"])
  assert not any(name.endswith((".pkl", ".pickle")) for _, _, files in os.walk(out)
                 for name in files)

  with pytest.raises(FileExistsError, match="already holds an export bundle"):
    checkpoint.export_bundle(out, params=params, config=config,
                             representation=rep, step=8)
  with pytest.raises(FileNotFoundError, match="not an export bundle"):
    checkpoint.load_bundle(str(tmp_path))
  # A changed config, then a cut parameter file: both refused, named.
  config_path = os.path.join(out, "config.json")
  original = open(config_path).read()
  open(config_path, "w").write(original.replace('"seed": 0', '"seed": 1'))
  with pytest.raises(ValueError, match=r"files changed.*config\.json"):
    checkpoint.load_bundle(out)
  open(config_path, "w").write(original)
  array_files = [os.path.join(root, name) for root, _, files in
                 os.walk(os.path.join(out, "params")) for name in files
                 if "/d/" in os.path.join(root, name)]
  assert array_files
  os.truncate(array_files[0], os.path.getsize(array_files[0]) // 2)
  with pytest.raises(ValueError, match=r"files changed.*params/"):
    checkpoint.load_bundle(out)

  info_path = os.path.join(out, checkpoint.BUNDLE_FILE)
  info = json.load(open(info_path))
  info["format_version"] = 99
  json.dump(info, open(info_path, "w"))
  with pytest.raises(ValueError, match="format_version 99"):
    checkpoint.load_bundle(out)


def test_replicated_arrays_on_one_host_are_saved_without_compiling(tmp_path):
  """Parameters replicated over 8 devices: orbax's replica-parallel writes
  would cut each array into 8 parts with one compiled program per part and
  device; with one process every array is written whole, compiling nothing."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {name: jax.device_put(np.arange(np.prod(shape), dtype=np.float32)
                                .reshape(shape), replicated)
           for name, shape in (("a", (16, 24)), ("b", (40,)), ("c", (8, 3, 5)))}
  assert len(jax.devices()) == 8
  compiled = []

  def listener(name, *_, **__):
    if name == "/jax/core/compile/backend_compile_duration":
      compiled.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    manager = checkpoint.create_manager(str(tmp_path), keep=1)
    checkpoint.save(manager, 1, state, _iterator(), force=True)
    manager.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == []
  abstract = checkpoint.with_sharding(jax.eval_shape(lambda: state), replicated)
  restored, step = checkpoint.restore_latest(manager, abstract, _iterator())
  assert step == 1
  for name, value in state.items():
    np.testing.assert_array_equal(np.asarray(restored[name]), np.asarray(value))
  manager.close()
