"""Export bundles in the Hub layout (model.safetensors + README.md model card),
`--format`, loading either format, shape checks and version-1 bundles."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from musegen_jax import checkpoint
from musegen_jax import errors
from musegen_jax import export as export_lib
from musegen_jax import hub
from musegen_jax import sample as sample_lib
from musegen_jax import tasks
from musegen_jax import train
from musegen_jax.data import pipeline
from musegen_jax.data import shards

from conftest import load_config, log_rows, tiny_lstm_config

pytestmark = pytest.mark.usefixtures("fewer_optimizations")


TRAIN_COMMAND = "python -m musegen_jax.main --config=configs/lstm.py:smoke --workdir=RUN"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 4-step LSTM run with evaluations at steps 2 and 4: (workdir, config)."""
  from conftest import fewer_xla_optimizations
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_lstm_config(num_train_steps=4, warmup_steps=1, log_every_steps=2,
                            eval_every_steps=2, checkpoint_every_steps=4)
  with fewer_xla_optimizations():
    train.train_and_evaluate(config, workdir, command=TRAIN_COMMAND)
  return workdir, config


def _leaves_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_each_format_writes_its_files_and_loads_the_same_params(run, tmp_path):
  workdir, config = run
  bundles = {fmt: export_lib.export(workdir, str(tmp_path / fmt), "latest", fmt)
             for fmt in ("orbax", "safetensors", "both")}
  listing = {fmt: sorted(os.listdir(path)) for fmt, path in bundles.items()}
  common = ["README.md", "bundle.json", "config.json", "representation.json"]
  assert listing["orbax"] == sorted(common + ["params"])
  assert listing["safetensors"] == sorted(common + ["model.safetensors"])
  assert listing["both"] == sorted(common + ["model.safetensors", "params"])
  for fmt, path in bundles.items():
    info = json.load(open(os.path.join(path, "bundle.json")))
    assert info["format_version"] == 2 and info["step"] == 4
    assert info["formats"] == (["orbax", "safetensors"] if fmt == "both" else [fmt])
    assert "README.md" in info["sha256"]

  reference = checkpoint.load_bundle(bundles["orbax"]).params
  # The plain safetensors reader lists every parameter by its Flax path.
  tensors = load_file(os.path.join(bundles["safetensors"], "model.safetensors"))
  expected_keys = {".".join(str(k.key) for k in path)
                   for path, _ in jax.tree_util.tree_flatten_with_path(reference)[0]}
  assert set(tensors) == expected_keys
  assert {"embed.embedding", "lstm_0.w_ih", "head.kernel"} <= set(tensors)
  for key, leaf in hub.flatten_params(reference).items():
    np.testing.assert_array_equal(tensors[key], leaf)
    assert tensors[key].dtype == leaf.dtype
  # The header carries what the file is.
  _, metadata = hub.read_safetensors(
      os.path.join(bundles["safetensors"], "model.safetensors"))
  assert metadata["step"] == "4" and metadata["task"] == "lm"
  assert metadata["format"] == "flax"

  # load_bundle: the same nested tree from every bundle and format.
  loaded = checkpoint.load_bundle(bundles["safetensors"])
  assert loaded.step == 4 and loaded.config.model.name == config.model.name
  _leaves_equal(loaded.params, reference)
  for fmt in ("orbax", "safetensors"):
    _leaves_equal(checkpoint.load_bundle(bundles["both"], fmt).params, reference)
  with pytest.raises(errors.UserError, match="holds no 'orbax' parameters"):
    checkpoint.load_bundle(bundles["safetensors"], "orbax")


def test_model_card_tells_task_model_steps_evaluations_and_commands(run, tmp_path):
  workdir, config = run
  bundle = export_lib.export(workdir, str(tmp_path / "hub"), "latest",
                             "safetensors")
  card = open(os.path.join(bundle, "README.md"), encoding="utf-8").read()
  front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
  assert "library_name: musegen_jax" in front
  assert '- "lm"' in front and f'- "{config.model.name}"' in front
  assert f"# {config.model.name} (lm), step 4" in body
  assert "trained for 4 of 4 steps" in body
  assert "- representation: `performance`" in body
  # The valid rows of the run's log, each with its figures.
  valid = log_rows(workdir, "valid")
  assert [r["step"] for r in valid] == [2, 4]
  for row in valid:
    assert f"| {row['step']} | {row['valid/loss']:.4g} |" in body
  assert f"valid_loss {valid[-1]['valid/loss']:.4g}" in body  # The checkpoint's.
  assert f"Trained with\n\n```\n{TRAIN_COMMAND}\n```\n" in body
  assert (f"python -m musegen_jax.export --workdir={workdir} --output="
          f"{tmp_path / 'hub'} --checkpoint=latest --format=safetensors") in body
  assert "python -m musegen_jax.sample --export=THIS_FOLDER" in body
  assert 'load_file("model.safetensors")' in body
  assert '"num_train_steps": 4' in body  # The training config, inline.


def test_sample_works_from_a_safetensors_only_folder(run, tmp_path):
  workdir, _ = run
  bundle = export_lib.export(workdir, str(tmp_path / "exported"), "latest",
                             "safetensors")
  moved = str(tmp_path / "elsewhere" / "model")
  shutil.copytree(bundle, moved)
  shutil.rmtree(bundle)
  paths = sample_lib.sample(moved, str(tmp_path / "samples"), num_samples=2,
                            length=16, seed=0)
  assert len(paths) == 2 and all(os.path.getsize(p) > 0 for p in paths)


def test_tensors_that_do_not_fit_the_config_are_named(run, tmp_path):
  workdir, config = run
  spec = json.load(open(os.path.join(workdir, "representation.json")))
  good = checkpoint.load_bundle(export_lib.export(
      workdir, str(tmp_path / "good"), "latest", "orbax")).params
  flat = hub.flatten_params(good)
  key = "head.kernel"
  wrong_shape = np.zeros(flat[key].shape[:-1] + (flat[key].shape[-1] + 1,),
                         flat[key].dtype)
  bad = dict(flat, **{key: wrong_shape})
  bundle = checkpoint.export_bundle(str(tmp_path / "bad"), params=bad, config=config,
                                    representation=spec, step=4,
                                    export_format="safetensors")
  with pytest.raises(errors.UserError) as info:
    checkpoint.load_bundle(bundle)
  message = str(info.value)
  assert "\n" not in message
  assert f"parameter {key!r} has shape {wrong_shape.shape}" in message
  assert f"needs {flat[key].shape}" in message

  expected = hub.expected_params(config, spec)
  hub.check_params_match(expected, good)  # Nested trees and flat dicts alike.
  hub.check_params_match(expected, flat)
  missing = {k: v for k, v in flat.items() if k != key}
  with pytest.raises(errors.UserError, match=rf"'{key}' \(shape .*\) is missing"):
    hub.check_params_match(expected, missing)
  with pytest.raises(errors.UserError, match=r"'extra.kernel' \(shape \(3,\)\) is not "):
    hub.check_params_match(expected, dict(flat, **{"extra.kernel": np.zeros(3)}))


def test_a_wrong_format_is_one_line_naming_the_flag(run, tmp_path):
  workdir, _ = run
  with pytest.raises(errors.UserError,
                     match=r"--format='zip': use one of orbax, safetensors, both"):
    export_lib.export(workdir, str(tmp_path / "out"), "latest", "zip")
  assert not os.path.exists(tmp_path / "out")
  proc = subprocess.run(
      [sys.executable, "-m", "musegen_jax.export", f"--workdir={workdir}",
       f"--output={tmp_path / 'out'}", "--format=zip"],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "error: --format='zip': use one of orbax, safetensors, both."]


def _export_bundle_v1(output_dir, *, params, config, representation, step):
  """A bundle as musegen_jax wrote them before format version 2 (issue 29):
  orbax params/, config.json, representation.json and bundle.json."""
  os.makedirs(output_dir)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(output_dir, "params"), jax.device_get(params))
  checkpointer.wait_until_finished()
  shards.write_json_atomic(os.path.join(output_dir, "config.json"), config.to_dict())
  shards.write_json_atomic(os.path.join(output_dir, "representation.json"),
                           representation)
  sums = {}
  for root, _, files in os.walk(output_dir):
    for name in files:
      path = os.path.join(root, name)
      sums[os.path.relpath(path, output_dir)] = hashlib.sha256(
          open(path, "rb").read()).hexdigest()
  shards.write_json_atomic(os.path.join(output_dir, "bundle.json"),
                           {"format_version": 1, "step": int(step),
                            "task": config.task, "model": config.model.name,
                            "sha256": dict(sorted(sums.items()))})
  return output_dir


def test_a_version_1_bundle_still_loads_and_samples(run, tmp_path):
  workdir, config = run
  spec = json.load(open(os.path.join(workdir, "representation.json")))
  params = checkpoint.load_bundle(export_lib.export(
      workdir, str(tmp_path / "new"), "latest", "orbax")).params
  old = _export_bundle_v1(str(tmp_path / "old"), params=params, config=config,
                          representation=spec, step=4)
  loaded = checkpoint.load_bundle(old)
  assert loaded.step == 4 and loaded.representation == spec
  _leaves_equal(loaded.params, params)
  with pytest.raises(errors.UserError, match="holds no 'safetensors' parameters"):
    checkpoint.load_bundle(old, "safetensors")
  paths = sample_lib.sample(old, str(tmp_path / "samples"), num_samples=1,
                            length=8, seed=0)
  assert len(paths) == 1


def test_the_gan_bundle_round_trips_through_safetensors(tmp_path):
  """The GAN exports the EMA generator's variables (params and, where the
  generator has them, batch statistics); the discriminator stays behind."""
  config = load_config("gan")
  task = tasks.create_task(config, train.load_representation(config, ""))
  spec = pipeline.representation_spec(task.representation)
  abstract = hub.expected_params(config, spec)
  assert set(abstract) <= {"params", "batch_stats"}
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: rng.standard_normal(x.shape).astype(x.dtype), abstract)
  bundle = checkpoint.export_bundle(str(tmp_path / "gan"), params=params,
                                    config=config, representation=spec, step=3)
  tensors = load_file(os.path.join(bundle, "model.safetensors"))
  assert set(tensors) == set(hub.flatten_params(params))
  assert all(k.split(".")[0] in ("params", "batch_stats") for k in tensors)
  from_safetensors = checkpoint.load_bundle(bundle, "safetensors")
  _leaves_equal(from_safetensors.params, params)
  _leaves_equal(from_safetensors.params,
                checkpoint.load_bundle(bundle, "orbax").params)
  card = open(os.path.join(bundle, "README.md"), encoding="utf-8").read()
  assert f"# {config.model.name} (gan), step 3" in card
