"""The training loop end to end on the bundled chorales, 8 forced CPU devices.

Real grain, real orbax, real compiled steps; tiny widths and few steps.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import note_seq
import pytest
import soundfile

from musegen_jax import checkpoint
from musegen_jax import export as export_lib
from musegen_jax import sample as sample_lib
from musegen_jax import train
from musegen_jax.data import jsb
from musegen_jax.data import pipeline

from conftest import REPO_ROOT, load_config, log_rows, tiny_lstm_config


def _tiny(**overrides):
  return tiny_lstm_config(**{"model__num_layers": 2, "num_train_steps": 40,
                             "warmup_steps": 5, "eval_every_steps": 20,
                             "num_eval_batches": 2, **overrides})


def _losses(workdir):
  return {row["step"]: row["train/loss"] for row in log_rows(workdir)}


@pytest.mark.slow
def test_smoke_config_lowers_the_loss_on_8_devices(tmp_path):
  assert jax.device_count() == 8
  config = load_config("lstm", num_train_steps=80, eval_every_steps=40)
  state = train.train_and_evaluate(config, str(tmp_path))
  # The state really is laid out over the 8-device mesh.
  leaf = jax.tree.leaves(state.params)[0]
  assert len(leaf.sharding.device_set) == 8
  losses = _losses(str(tmp_path))
  assert sorted(losses) == list(range(1, 81))
  first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean(
      [losses[s] for s in range(76, 81)])
  assert last < first - 1.0, (first, last)  # ln(390) = 5.97 at the start.
  assert os.listdir(tmp_path / "tensorboard")
  # Saved at each eval (40) and at the end (80).
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [40, 80]


@pytest.mark.slow
def test_resumed_run_repeats_the_uninterrupted_losses_exactly(tmp_path):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  train.train_and_evaluate(_tiny(), full)
  train.train_and_evaluate(_tiny(), cut, stop_at_step=17)  # Mid-interval stop.
  assert max(_losses(cut)) == 17
  train.train_and_evaluate(_tiny(), cut)
  assert _losses(cut) == _losses(full)  # Bit for bit, every step.


@pytest.mark.slow
def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path):
  """Ctrl-C as a terminal sends it (to the trainer and its grain worker),
  then the same command: the losses equal those of a run never stopped."""
  workdir = str(tmp_path / "run")
  overrides = {"data.num_workers": 1, "num_train_steps": 60,
               "checkpoint_every_steps": 1000, "eval_every_steps": 1000,
               "sample_every_steps": 0}
  command = [sys.executable, "-m", "musegen_jax.main",
             f"--config={REPO_ROOT}/configs/lstm.py:smoke", f"--workdir={workdir}",
             *[f"--config.{k}={v}" for k, v in overrides.items()]]
  proc = subprocess.Popen(command, cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  log = os.path.join(workdir, "train_log.jsonl")
  deadline = time.time() + 120
  while not (os.path.exists(log) and len(open(log).readlines()) >= 20):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGINT)  # The whole process group.
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out
  stopped = max(_losses(workdir))
  assert stopped < 60
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped)]
  assert f"Stopped at step {stopped} of 60; the same command resumes." in out
  # The bar counts finished steps: its last count is the step saved.
  assert re.findall(r"(\d+)/60 \[", out)[-1] == str(stopped), out
  # The summary says where things are; the lock is gone.
  assert f"checkpoints: {os.path.join(workdir, 'checkpoints')}" in out
  assert f"python -m musegen_jax.export --workdir={workdir}" in out
  assert not os.path.exists(os.path.join(workdir, ".lock"))
  # The worker ended cleanly: the batches it held are freed, and the
  # resource tracker finds nothing to report.
  assert "leaked shared_memory" not in out, out

  rerun = subprocess.run(command, cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=180)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert f"Resumed from step {stopped}" in rerun.stdout
  assert "leaked shared_memory" not in rerun.stderr, rerun.stderr
  # Each launch is recorded as typed (the model card's "Trained with").
  typed = shlex.join(["python", "-m", "musegen_jax.main", *command[3:]])
  assert open(os.path.join(workdir, "commands.txt")).read() == 2 * (typed + "\n")
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(load_config("lstm", **{
      k.replace(".", "__"): v for k, v in overrides.items()}), reference)
  assert _losses(workdir) == _losses(reference)  # Bit for bit, all 60 steps.


@pytest.mark.slow
def test_export_then_sample_writes_midi_that_note_seq_reads(tmp_path):
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "export")
  config = _tiny(num_train_steps=20)
  state = train.train_and_evaluate(config, workdir)
  export_lib.export(workdir, bundle)
  loaded = checkpoint.load_bundle(bundle)
  assert loaded.step == 20
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  primer = str(tmp_path / "primer.mid")
  note_seq.sequence_proto_to_midi_file(jsb.load_jsb("test")[0], primer)
  primer_notes = len(note_seq.midi_file_to_note_sequence(primer).notes)
  for name, kwargs in (("free", {}), ("primed", {"primer": primer})):
    out = str(tmp_path / name)
    paths = sample_lib.sample(bundle, out, num_samples=3, length=64, seed=1,
                              top_p=0.9, render_audio=bool(kwargs), **kwargs)
    assert len(paths) == 3
    for path in paths:
      ns = note_seq.midi_file_to_note_sequence(path)
      assert os.path.getsize(path[:-4] + ".png") > 1000
      if kwargs:
        assert len(ns.notes) >= primer_notes  # The primer, then the continuation.
        # --render_audio: the synthesizer's WAV of the same notes beside it.
        wav, rate = soundfile.read(path[:-4] + ".wav")
        assert rate == 16000 and np.abs(wav).max() > 0.01
        assert abs(len(wav) / rate - ns.total_time) < 1.0
      else:
        assert not os.path.exists(path[:-4] + ".wav")

  # Ensembles: a bundle with itself is the bundle (a mixture of one
  # distribution); with the step-10 bundle each member scores as it does
  # alone, and the mixture is no worse than the members' average (Jensen).
  from musegen_jax import evaluate
  early = str(tmp_path / "export_10")
  export_lib.export(workdir, early, "10")
  alone = evaluate.evaluate(bundle, split="valid")
  itself = evaluate.evaluate(f"{bundle},{bundle}", split="valid")
  np.testing.assert_allclose(itself["loss"], alone["loss"], rtol=1e-6)
  assert itself["accuracy"] == alone["accuracy"]
  both = evaluate.evaluate(f"{bundle},{early}", split="valid")
  assert [m["step"] for m in both["members"]] == [20, 10]
  np.testing.assert_allclose(both["members"][0]["loss"], alone["loss"],
                             rtol=1e-6)
  np.testing.assert_allclose(
      both["members"][1]["loss"],
      evaluate.evaluate(early, split="valid")["loss"], rtol=1e-6)
  assert both["members"][0]["loss"] != both["members"][1]["loss"]
  assert both["loss"] <= np.mean([m["loss"] for m in both["members"]])


def test_initializers_compiled_for_compile_speed_give_the_default_values(
    jsb_data_dir):
  """The train state and the parameters are compiled at LLVM's level 1 on
  CPU (`state.initializer_compiler_options`); the values are those of XLA's
  default compile bit for bit, on the 8-device mesh too."""
  from musegen_jax import tasks
  from musegen_jax.tasks import state as state_lib
  assert state_lib.initializer_compiler_options() == {
      "xla_backend_optimization_level": 1}
  config = tiny_lstm_config()
  task = tasks.create_task(
      config, pipeline.load_representation("performance", jsb_data_dir))
  mesh = train.create_mesh(config)
  rng = jax.random.PRNGKey(3)
  state = train.create_train_state(task, config, mesh, rng)
  # The default compile of the same initializer (init_params inlined).
  default = jax.jit(lambda r: state_lib.unbox(task.init_state(r)),
                    out_shardings=train.state_shardings(task, mesh))(rng)
  assert jax.tree.structure(state) == jax.tree.structure(default)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(default)):
    assert a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Its own program, at level 1.
  params = task.init_params(
      rng, compiler_options=state_lib.initializer_compiler_options())
  assert jax.tree.structure(params) == jax.tree.structure(default.params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(default.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  largest = max(jax.tree.leaves(params), key=lambda a: a.size)
  assert len(np.unique(np.asarray(largest))) > largest.size // 2  # Drawn.
  # The abstract state (export's restore target) computes nothing and
  # matches: shapes, dtypes and shardings.
  abstract = train.abstract_train_state(task, mesh)
  assert jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), abstract) == (
      jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), state))


def test_carried_state_sampling_equals_full_recompute(jsb_data_dir):
  config = _tiny()
  rep = pipeline.load_representation("performance", jsb_data_dir)
  from musegen_jax import tasks
  task = tasks.create_task(config, rep)
  params = task.init_params(jax.random.PRNGKey(0))
  primer = np.array([[1, 200, 60], [1, 210, 70]], np.int32)
  tokens = np.asarray(task.sample(params, jax.random.PRNGKey(0), primer, length=12,
                                  top_k=1))
  # Greedy: each token is the argmax of a run without carried state over
  # everything before it. The model is causal, so one run over the whole
  # sequence gives every prefix's last logits at once.
  sequence = np.concatenate([primer, tokens], 1)
  logits, _ = jax.jit(lambda p, x: task.model.apply({"params": p}, x, train=False))(
      params, sequence[:, :-1])
  np.testing.assert_array_equal(
      tokens, np.argmax(logits[:, primer.shape[1] - 1:], -1))


def test_batch_not_divisible_by_devices_fails_before_compile(tmp_path):
  with pytest.raises(ValueError, match=r"batch_size=12 .*number of devices \(8\)"):
    train.train_and_evaluate(_tiny(batch_size=12), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("override, message", [
    ("--config.batch_sizee=16", "batch_sizee"),
    ("--config.model.hiden_size=8", "hiden_size"),
    ("--config.batch_size=sixteen", "batch_size"),
])
def test_bad_config_override_fails_naming_the_key(tmp_path, override, message):
  result = subprocess.run(
      [sys.executable, "-m", "musegen_jax.main",
       f"--config={REPO_ROOT}/configs/lstm.py:smoke",
       f"--workdir={tmp_path}/run", override],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert message in result.stderr
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("overrides, message", [
    ({"learning_rate": -1e-3}, r"config.learning_rate=-0.001 must be > 0"),
    ({"model__dropout_rate": 1.5}, r"config.model.dropout_rate=1.5 must be in \[0, 1\)"),
    ({"nonfinite": "ignore"}, r"config.nonfinite='ignore'; allowed: \['stop', 'skip'\]"),
    ({"data__bad_records": "drop"}, r"config.data.bad_records='drop'; allowed"),
    ({"parallelism": "pmapp"}, r"config.parallelism='pmapp'; allowed"),
])
def test_out_of_range_values_fail_before_compile_naming_the_key(tmp_path, overrides,
                                                                message):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_tiny(**overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")
