"""The benchmark entry point runs and prints one JSON line with the shared keys.

No timing is asserted here: figures belong in BUILD_NOTES.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
@pytest.mark.parametrize("bench, flags, keys", [
    ("data", ["--ratio_steps=1", "--data_batches=5", "--data_warmup=1"],
     ["examples_per_sec", "tokens_per_sec", "train_examples_per_sec",
      "data_over_train", "peak_rss_mb", "device"]),
    ("sample", ["--sample_batch=2", "--sample_length=24", "--sample_repeats=1",
                "--baseline_tokens=8", "--baseline_bucket=8"],
     ["tokens_per_sec", "step_ms", "compile_s", "speedup", "baseline_tokens",
      "peak_rss_mb", "device"]),
    ("soak", ["--soak_steps=120", "--soak_checkpoint_every=30"],
     ["steps_per_sec", "rss_start_mb", "rss_after_first_checkpoint_mb",
      "rss_end_mb", "growth_after_first_checkpoint", "peak_rss_mb", "device"]),
])
def test_bench_prints_one_json_line(bench, flags, keys):
  result = subprocess.run(
      [sys.executable, "-m", "musegen_jax.bench", f"--bench={bench}",
       f"--config={REPO_ROOT}/configs/lstm.py:smoke", *flags],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  assert len(lines) == 1, result.stdout
  record = json.loads(lines[0])
  assert record["bench"] == bench
  for key in keys:
    assert record[key] is not None, key
  assert record[keys[0]] > 0
  if bench == "soak":
    # The newest three (keep_checkpoints) plus the best by valid loss.
    kept = [int(step) for step in record["checkpoints_kept"]]
    assert {60, 90, 120} <= set(kept) and len(kept) <= 4


TRANSFORMER_SHAPE = {"vocab_size": 390, "d_model": 256, "num_layers": 4,
                     "batch_size": 8, "seq_len": 256, "attention": "absolute"}


@pytest.mark.slow
@pytest.mark.parametrize("config, flags, shape", [
    ("bigru", [], {"vocab_size": 201, "embed_dim": 100, "hidden_size": 128,
                   "num_layers": 3, "window": 50, "batch_size": 64}),
    ("transformer", ["--matmul_dtype=bfloat16"],
     {**TRANSFORMER_SHAPE, "matmul_dtype": "bfloat16",
      "roof_source": "jax bfloat16 256^3 matmul (float32 sums), median of 10"}),
])
def test_train_bench_runs_at_the_fixed_shape(config, flags, shape):
  """One step at the fixed benchmark shape, the same as the PyTorch reference's.

  The Transformer runs with bfloat16 matmuls only: the float32 path is the
  bigru's, and each run here compiles a full-size model (half a minute).
  """
  result = subprocess.run(
      [sys.executable, "-m", "musegen_jax.bench", "--bench=train",
       f"--config={REPO_ROOT}/configs/{config}.py", "--steps=1", "--warmup=0",
       "--roof_size=256", *flags],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads([line for line in result.stdout.splitlines()
                       if line.startswith("{")][0])
  for key, value in shape.items():
    assert record[key] == value, key
  assert record["flops_per_step"] > 0 and record["mfu"] > 0
  assert record["step_ms"] > 0 and record["compile_s"] > 0
  assert record["init_s"] > 0
  # The entry point re-executed itself with huge-page malloc.
  assert "glibc.malloc.hugetlb=1" in record["env"]["GLIBC_TUNABLES"]


@pytest.mark.slow
def test_accelerator_check_dry_run_prints_a_line_per_family():
  """launch/gpu_check.sh --dry_run: the accelerator suite's code path at the
  smoke sizes, on this CPU (the real sizes run on a lent GPU)."""
  result = subprocess.run(
      ["bash", f"{REPO_ROOT}/launch/gpu_check.sh", "--dry_run", "--",
       "--roof_size=256"], capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in result.stdout.splitlines()
          if line.startswith("{")]
  assert [r["job"] for r in rows] == ["transformer", "wavegan", "lstm", "bigru", "vae"]
  for row in rows:
    assert row["bench"] == "accelerator" and row["dry_run"] is True
    assert row["step_ms"] > 0 and row["compile_s"] > 0 and row["sample_s"] > 0
    assert row["examples_per_sec"] > 0 and row["peak_tflops"] > 0
    assert row["flops_per_step"] > 0 and 0 < row["mfu"]
    assert row["peak_source"].startswith("measured")  # A CPU has no table entry.
  by_job = {r["job"]: r for r in rows}
  # Analytic counts where the model has one; XLA's for the VAE.
  assert by_job["vae"]["flops_source"] == "xla cost_analysis"
  assert by_job["transformer"]["flops_source"].startswith("analytic")
  assert by_job["wavegan"]["clips_per_sec"] > 0
  assert by_job["lstm"]["sample_steps_per_sec"] > 0
