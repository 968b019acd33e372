"""Ahead-of-time compiles for TPU topologies on this CPU host (libtpu, the
`tpu` extra), and over forced CPU devices.

The compiles are real: the project's own train, eval and sampling programs,
lowered with abstract inputs over a mesh of compile-only TPU chips and
compiled by libtpu. The per-task batch specs they use are checked against
the real pipelines' batches.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config
from musegen_jax import aot
from musegen_jax import backend
from musegen_jax import errors

V5E_4 = aot.parse_topology("v5e:2x2")


def _rows_by_program(rows):
  return {row["program"]: row for row in rows}


@pytest.mark.parametrize("name,chips,libtpu_name", [
    ("v5e:2x2", 4, "v5e:2x2"), ("v5e-64", 64, "v5e:8x8"),
    ("v5e-256", 256, "v5e:16x16"), ("v6e-8", 8, "v6e:2x4"),
    ("v4-32", 16, "v4:2x2x4"), ("v5p-128", 64, "v5p:4x4x4"),
    ("v4:2x2x1", 4, "v4:2x2x1"), ("v5litepod-16", 16, "v5e:4x4")])
def test_topology_names(name, chips, libtpu_name):
  topology = aot.parse_topology(name)
  assert (topology.chips, topology.libtpu_name, topology.platform) == (
      chips, libtpu_name, "tpu")
  assert topology.hbm_bytes == aot.HBM_GIB[libtpu_name.split(":")[0]] * 2**30


def test_cpu_topology_and_bad_names():
  cpu = aot.parse_topology("cpu:8")
  assert (cpu.platform, cpu.chips, cpu.hbm_bytes) == ("cpu", 8, None)
  for bad, says in [("v9:2x2", "unknown TPU generation"), ("v5e:2x2x2", "2 dimensions"),
                    ("v4-6", "TensorCores"), ("tpu", "not a topology name"),
                    ("cpu:0", "at least 1")]:
    with pytest.raises(errors.UserError, match=says) as info:
      aot.parse_topology(bad)
    assert "known forms" in str(info.value)


def test_the_target_platform_picks_the_kernels():
  """Compiling for TPU on a CPU host takes the TPU kernels, not the CPU ones."""
  from musegen_jax.kernels import attention, conv
  from musegen_jax.tasks import state
  assert backend.platform() == "cpu"
  assert conv.resolve_conv_impl("auto") == "matmul"
  assert state.initializer_compiler_options() is not None
  with backend.compiling_for("tpu"):
    assert backend.platform() == "tpu"
    assert conv.resolve_conv_impl("auto") == "lax"
    assert attention.resolve_attention_impl("auto") == "fused"
    assert state.initializer_compiler_options() is None
  assert backend.platform() == "cpu"


@pytest.mark.parametrize("name", ["lm", "vae", "gan", "pianoroll"])
def test_batch_specs_match_the_real_batches(name, jsb_data_dir):
  """What the compiles feed is what the pipelines give (8 forced devices:
  one process, so its batch is the global one)."""
  from musegen_jax import tasks, train
  config = {"lm": lambda: load_config("lstm"), "vae": lambda: load_config("vae"),
            "gan": lambda: load_config("gan"),
            "pianoroll": lambda: load_config("jsb_lstm")}[name]()
  data_dir = train.resolve_data_dir(config)
  task = tasks.create_task(config, train.load_representation(config, data_dir))
  data_dir = task.prepare_data(data_dir)
  train_iter = iter(task.create_train_dataset(data_dir))
  try:
    batch = next(train_iter)
  finally:
    getattr(train_iter, "close", lambda: None)()
  batch.pop("bad_records", None)
  eval_batch = next(iter(task.eval_batches(task.eval_data(data_dir))))
  for split, real in (("train", batch), ("eval", eval_batch)):
    spec = task.batch_spec(split)
    assert sorted(spec) == sorted(real), (split, sorted(spec), sorted(real))
    for key, value in real.items():
      assert (spec[key].shape, spec[key].dtype) == (
          np.shape(value), np.asarray(value).dtype), (split, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gan", "lstm", "bigru", "transformer", "vae",
                                  "jsb_lstm"])
def test_every_family_compiles_on_four_v5e_chips(name):
  config = load_config(name)
  rows = _rows_by_program(aot.compile_programs(config, V5E_4,
                                               ["train", "eval", "sample"],
                                               write=lambda line: None))
  assert sorted(rows) == ["eval", "sample", "train"]
  for row in rows.values():
    assert row["fits"] and row["platform"] == "tpu" and row["chips"] == 4
    assert row["mesh"] == {"data": 4, "fsdp": 1}
    assert 0 < row["total_mib"] < 16 * 1024
    assert row["temp_mib"] >= 0 and row["code_mib"] > 0
    assert row["xla_flops_per_chip"] > 0 and row["compile_s"] > 0
  train_row = rows["train"]
  assert train_row["per_chip_batch"] * 4 == config.batch_size
  # The donated state comes back in place: its outputs alias its arguments.
  assert train_row["alias_mib"] > 0
  if name in ("gan", "lstm", "bigru", "transformer"):
    # Per chip, XLA's count of one step is at most the whole step's analytic
    # count (loops' bodies counted once, the batch split over 4 chips).
    assert 0 < train_row["xla_flops_per_chip"] < train_row["analytic_flops"]


@pytest.mark.slow
def test_fsdp_splits_the_state_over_eight_chips():
  """Per-chip argument bytes (the train state, mostly) fall with fsdp."""
  topology = aot.parse_topology("v5e:2x4")
  args = {}
  for fsdp in (1, 8):
    config = load_config("transformer", batch_size=16, mesh__fsdp=fsdp,
                         model__d_model=128, model__mlp_dim=512)
    (row,) = aot.compile_programs(config, topology, ["train"],
                                  write=lambda line: None)
    assert row["mesh"] == {"data": 8 // fsdp, "fsdp": fsdp} and row["fits"]
    args[fsdp] = row["argument_mib"]
  assert args[8] < 0.4 * args[1], args


def test_forced_cpu_devices_need_no_libtpu():
  config = load_config("lstm")
  rows = aot.compile_programs(config, aot.parse_topology("cpu:4"), ["train", "sample"],
                              write=lambda line: None)
  assert [r["program"] for r in rows] == ["train", "sample"]
  assert all(r["fits"] and r["platform"] == "cpu" and r["mesh"]["data"] == 4
             for r in rows)
  assert rows[0]["memory_source"] == "this machine's memory / devices"


def test_config_mistakes_for_a_topology():
  with pytest.raises(errors.UserError, match="config.batch_size=12"):
    aot.compile_programs(load_config("lstm", batch_size=12), aot.parse_topology("v5e:2x4"),
                         ["train"], write=lambda line: None)
  with pytest.raises(errors.UserError, match="pmap"):
    aot.compile_programs(load_config("lstm", parallelism="pmap"), V5E_4,
                         ["train"], write=lambda line: None)
  with pytest.raises(errors.UserError, match="allowed: init, train"):
    aot.compile_programs(load_config("lstm"), V5E_4, ["trian"],
                         write=lambda line: None)


def _aot(*args):
  return subprocess.run([sys.executable, "-m", "musegen_jax.aot", *args],
                        capture_output=True, text=True, timeout=600)


def test_cli_an_oversized_batch_does_not_fit_and_exits_1():
  # 2^20 sequences: 262,144 per chip, whose LSTM activations need about 83 GiB.
  result = _aot(f"--config={REPO_ROOT}/configs/lstm.py:smoke", "--topology=v5e:2x2",
                "--config.batch_size=1048576", "--programs=train")
  assert result.returncode == 1, result.stderr[-2000:]
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("{")]
  row = json.loads(line)
  assert row["program"] == "train" and row["fits"] is False
  assert row["per_chip_batch"] == 262144 and "HBM" in row["error"]
  errors_ = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors_) == 1 and "does not fit v5e:2x2" in errors_[0]
  assert "config.batch_size" in errors_[0] and "Traceback" not in result.stderr


def test_cli_one_line_for_an_unknown_topology():
  result = _aot(f"--config={REPO_ROOT}/configs/lstm.py:smoke", "--topology=v7x:2x2")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert "--topology='v7x:2x2'" in result.stderr and "known forms" in result.stderr
  assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_prints_a_json_line_per_program_and_no_libtpu_noise():
  result = _aot(f"--config={REPO_ROOT}/configs/lstm.py:smoke", "--topology=v5e:2x2")
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [json.loads(l) for l in result.stdout.splitlines()]
  assert [r["program"] for r in rows] == ["train", "eval", "sample"]
  assert all(r["fits"] and r["topology"] == "v5e:2x2" for r in rows)
  # libtpu's warnings about TPU workers it cannot find are kept off stderr.
  assert "TPU_WORKER_HOSTNAMES" not in result.stderr, result.stderr[-2000:]
  assert jax.default_backend() == "cpu"
