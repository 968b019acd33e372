r"""Benchmarks of the training step, the input pipeline and sampling.

    python -m musegen_jax.bench --config=configs/lstm.py --bench=train
    python -m musegen_jax.bench --config=configs/lstm.py --bench=data
    python -m musegen_jax.bench --config=configs/lstm.py --bench=sample

Each prints one JSON line. The code measured is the code that trains: the task
from `tasks.create_task`, the state from `train.create_train_state`, and the
step jitted as `train.py` does it (donated state, shardings over
`train.create_mesh(config)`). `--bench=train` also gives `peak_memory_mb`, each
local device's peak allocation on GPU/TPU (None on CPU, where `peak_rss_mb`
is the figure).

- train: a fixed shape (`TRAIN_SHAPE`: performance vocabulary of 390, LSTM
  with embedding 256, 3 layers of 512, dropout 0.1, batch 32, sequence 128,
  float32) on random tokens, so figures compare across commits and with
  `musegen_jax.bench_torch`. FLOPs come from the analytic matmul count
  (`flops.lstm_train_flops`); XLA's `cost_analysis()` of the compiled
  step is reported beside it, but it counts each while-loop body once and so
  misses most recurrent matmuls. `init_s` is the train state's creation
  (compile and run), `compile_s` the step's compile. `mfu` divides the
  achieved FLOP/s by a float32 matmul roof measured here (`roof_gflops`).
- data: the real grain pipeline at the config's shape and workers, examples/s
  after warm-up, against a short train timing at the same shape
  (`data_over_train` should be >= 5).
- sample: tokens/s of `task.sample` (carried recurrent state, compile
  excluded) against re-running the model on the whole prefix for each token.
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time
from typing import Any, Callable

from absl import flags
from ml_collections import config_flags

from musegen_jax import cli
from musegen_jax import errors
from musegen_jax import runtime
from musegen_jax.benchmarks.common import (BIGRU_TRAIN_SHAPE, GAN_TRAIN_SHAPE,
                                           TRAIN_SHAPE, TRANSFORMER_TRAIN_SHAPE,
                                           cpu_model, peak_rss_mb)

# Before note_seq is imported: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file, optionally with ':variant'.",
    lock_config=True)
flags.DEFINE_enum("bench", "train", ["train", "data", "sample", "soak", "accelerator"],
                  "What to time. accelerator: every family's train step and "
                  "sampler at one accelerator chip's sizes (no --config).")
flags.DEFINE_bool("dry_run", False,
                  "--bench=accelerator: the smoke sizes, two steps (any machine).")
flags.DEFINE_float("peak_tflops", 0.0,
                   "--bench=accelerator: the chip's bfloat16 peak for MFU "
                   "(default: PEAK_BF16_FLOPS by device kind, else a measured "
                   "bfloat16 matmul).")
flags.DEFINE_integer("soak_steps", 20_000, "Train steps of the soak benchmark.")
flags.DEFINE_integer("soak_checkpoint_every", 500,
                     "Checkpoint interval of the soak benchmark.")
flags.DEFINE_integer("steps", 10, "Timed train steps (after warm-up).")
flags.DEFINE_bool("keep_attention", False,
                  "Transformer train bench: keep the config's attention kind "
                  "instead of the reference's absolute attention.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "Compute dtype of --bench=train (parameters stay float32).")
flags.DEFINE_integer("warmup", 2, "Untimed train steps after compilation.")
flags.DEFINE_enum("matmul_dtype", "", ["", "float32", "bfloat16"],
                  "--bench=train: config.model.matmul_dtype "
                  "(bfloat16: the matmuls in bfloat16, summed in float32; "
                  "the roof is then a bfloat16 matmul).")
flags.DEFINE_integer("roof_size", 2048, "Side of the matmul timed as the roof.")
flags.DEFINE_integer("data_batches", 300, "Timed batches of the data benchmark.")
flags.DEFINE_integer("data_warmup", 10, "Untimed batches first (workers start).")
flags.DEFINE_integer("ratio_steps", 5,
                     "Train steps timed at the config's shape for the data "
                     "benchmark's ratio (0: skip).")
flags.DEFINE_integer("sample_batch", 16, "Samples drawn in parallel.")
flags.DEFINE_integer("sample_length", 1024, "Tokens per sample.")
flags.DEFINE_integer("sample_repeats", 3, "Timed runs of the carried sampler.")
flags.DEFINE_integer("baseline_tokens", 256,
                     "Tokens the recompute baseline really generates; its cost "
                     "for the rest is summed from per-length timings.")
flags.DEFINE_integer("baseline_bucket", 64,
                     "The recompute baseline pads prefixes to a multiple of "
                     "this (one compiled program per length).")

def _import_jax():
  import jax  # pylint: disable=import-outside-toplevel
  return jax


def device_description() -> str:
  """Backend, device kind and count (and the CPU model and cores on CPU)."""
  jax = _import_jax()
  dev = jax.devices()[0]
  text = f"{jax.default_backend()}: {jax.device_count()} x {dev.device_kind}"
  if jax.default_backend() == "cpu":
    text += f" ({cpu_model()}, {os.cpu_count()} cores)"
  return text


def _load() -> float:
  return round(os.getloadavg()[0], 2)


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
  """(median, min) wall time of `fn()` over `repeats` calls."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times)


def measure_matmul_roof(size: int, repeats: int = 10,
                        dtype: str = "float32") -> float:
  """GFLOP/s of one jitted [size, size] @ [size, size] on device 0, operands
  in `dtype`, summed and returned in float32."""
  jax = _import_jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (size, size)).astype(dtype)
  b = jax.random.normal(kb, (size, size)).astype(dtype)
  matmul = jax.jit(functools.partial(jnp.matmul,
                                     preferred_element_type=jnp.float32))
  for _ in range(2):
    matmul(a, b).block_until_ready()
  seconds, _ = median_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
  return 2 * size**3 / seconds / 1e9


def fixed_train_config(config):
  """`config` at the fixed benchmark shape of its model (TRAIN_SHAPE for the
  LSTM, GAN_TRAIN_SHAPE for WaveGAN); optimizer and the rest kept."""
  config = config.copy_and_resolve_references()
  if config.model.name == "lstm":
    config.data.representation = "performance"
    config.model.embed_dim = TRAIN_SHAPE["embed_dim"]
    config.model.hidden_size = TRAIN_SHAPE["hidden_size"]
    config.model.num_layers = TRAIN_SHAPE["num_layers"]
    config.model.dropout_rate = TRAIN_SHAPE["dropout_rate"]
    config.batch_size = TRAIN_SHAPE["batch_size"]
    config.data.seq_len = TRAIN_SHAPE["seq_len"]
  elif config.model.name == "transformer":
    shape = TRANSFORMER_TRAIN_SHAPE
    config.data.representation = "performance"
    for key in ("d_model", "num_layers", "num_heads", "mlp_dim", "dropout_rate"):
      config.model[key] = shape[key]
    config.model.max_len = max(config.model.max_len, shape["seq_len"])
    # As the PyTorch reference: absolute attention, learned positions
    # (--config.model.attention is kept only with --keep_attention).
    if not FLAGS.keep_attention:
      config.model.attention = "absolute"
      config.model.position_encoding = "learned"
    config.batch_size = shape["batch_size"]
    config.data.seq_len = shape["seq_len"]
  elif config.model.name == "bigru":
    shape = BIGRU_TRAIN_SHAPE
    config.data.representation = "chord_token"  # Vocabulary: `_representation`.
    for key in ("embed_dim", "hidden_size", "num_layers", "window", "dense_dim",
                "dropout_rate"):
      config.model[key] = shape[key]
    config.batch_size = shape["batch_size"]
    config.data.seq_len = shape["window"]
  elif config.model.name == "wavegan":
    shape = GAN_TRAIN_SHAPE
    for key in ("dim", "latent_dim", "kernel_size", "phase_shuffle"):
      config.model[key] = shape[key]
    config.data.slice_len = shape["slice_len"]
    config.batch_size = shape["batch_size"]
    config.gan.loss = "wgan-gp"
    config.gan.critic_steps = shape["critic_steps"]
    config.gan.gp_weight = shape["gp_weight"]
  else:
    raise ValueError(f"--bench=train has fixed shapes for config.model.name "
                     f"'lstm', 'transformer', 'bigru' and 'wavegan', not "
                     f"{config.model.name!r}")
  config.model.dtype = FLAGS.dtype
  if FLAGS.matmul_dtype:
    if "matmul_dtype" not in config.model:
      raise ValueError(f"--matmul_dtype: config.model.name "
                       f"{config.model.name!r} has no matmul_dtype (the "
                       "Transformer, GRU and LSTM have)")
    config.model.matmul_dtype = FLAGS.matmul_dtype
  return config


def _representation(config):
  from musegen_jax import train  # pylint: disable=import-outside-toplevel
  from musegen_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  name = config.data.representation
  if name == "chord_token" and FLAGS.bench == "train":
    # The fixed shape's vocabulary: 197 made-up chords + PAD, EOS, REST, UNK
    # (random tokens are fed, so which chords does not matter).
    from musegen_jax.data import representations  # pylint: disable=import-outside-toplevel
    chords = [str(p) for p in range(128)] + [f"{p}-{p + 1}" for p in range(69)]
    rep = representations.get_representation(name, vocab=chords)
    assert rep.vocab_size == BIGRU_TRAIN_SHAPE["vocab_size"], rep.vocab_size
    return rep
  if name == "chord_token":  # Its vocabulary is learnt from the data.
    return pipeline.load_representation(name, train.resolve_data_dir(config))
  return train.load_representation(config, "")


def _model_shape(config, representation, *, batch: bool = True) -> dict[str, Any]:
  shape = {}
  if hasattr(representation, "vocab_size"):
    shape["vocab_size"] = int(representation.vocab_size)
  for key in ("embed_dim", "hidden_size", "d_model", "num_layers", "num_heads",
              "window", "dense_dim", "mlp_dim", "attention", "position_encoding",
              "dropout_rate", "dim", "latent_dim", "kernel_size", "conv_impl",
              "dtype", "matmul_dtype"):
    if key in config.model:
      shape[key] = config.model[key]
  if batch:
    shape["batch_size"] = config.batch_size
    if config.task == "gan":
      shape.update(slice_len=config.data.slice_len,
                   critic_steps=config.gan.critic_steps)
    else:
      shape["seq_len"] = config.data.seq_len
  return shape


def _random_batches(config, representation, count: int) -> list[dict[str, Any]]:
  """Host batches of the train step's shape: tokens avoiding PAD (0) and EOS
  (1), so every position carries weight, or audio in [-1, 1]."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  if config.task == "gan":
    shape = (config.batch_size, config.gan.critic_steps, config.data.slice_len, 1)
    return [{"audio": rng.uniform(-1, 1, shape).astype(np.float32)}
            for _ in range(count)]
  return [{"tokens": rng.integers(2, int(representation.vocab_size),
                                  (config.batch_size, config.data.seq_len + 1),
                                  dtype=np.int32)} for _ in range(count)]


def examples_per_step(config) -> int:
  """Training examples one step consumes (each critic update has its own batch)."""
  return config.batch_size * (config.gan.critic_steps if config.task == "gan" else 1)


def _environment() -> dict[str, str]:
  """Settings outside the config that change CPU speed."""
  return {k: os.environ[k] for k in ("XLA_FLAGS", "GLIBC_TUNABLES")
          if k in os.environ}


def time_train_step(config, *, steps: int, warmup: int) -> dict[str, Any]:
  """Compiles and times the real train step on random token batches."""
  jax = _import_jax()
  import numpy as np  # pylint: disable=import-outside-toplevel
  from musegen_jax import parallel  # pylint: disable=import-outside-toplevel
  from musegen_jax import tasks  # pylint: disable=import-outside-toplevel
  from musegen_jax import train  # pylint: disable=import-outside-toplevel

  train.check_config(config)
  representation = _representation(config)
  task = tasks.create_task(config, representation)
  mesh = train.create_mesh(config)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  t0 = time.perf_counter()
  state = jax.block_until_ready(
      train.create_train_state(task, config, mesh, init_rng))
  init_s = time.perf_counter() - t0
  train_step, _ = train.jit_steps(task, mesh)

  batches = _random_batches(config, representation, 4)
  watch = task.progress_keys[0]

  t0 = time.perf_counter()
  compiled = train_step.lower(state, parallel.global_batch(batches[0], mesh),
                              step_rng).compile()
  compile_s = time.perf_counter() - t0

  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, parallel.global_batch(batches[i % 4], mesh),
                              step_rng)
    jax.block_until_ready(metrics[watch])
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  if not np.isfinite(float(metrics[watch])):
    raise FloatingPointError(f"train {watch} is {float(metrics[watch])}")
  step_s = statistics.median(times)
  result = _model_shape(config, representation)
  # For the GAN: generated clips (one generator batch) per second.
  result.update(model=config.model.name,
                examples_per_sec=round(config.batch_size / step_s, 2))
  if config.task != "gan":
    result["tokens_per_sec"] = round(config.batch_size * config.data.seq_len / step_s, 1)
  result.update(
      consumed_examples_per_sec=round(examples_per_step(config) / step_s, 2),
      step_ms=round(step_s * 1e3, 1),
      step_ms_min=round(min(times) * 1e3, 1),
      steps=steps,
      compile_s=round(compile_s, 2),
      init_s=round(init_s, 2))
  result["_compiled"] = compiled
  return result


def peak_device_memory_mb() -> list[float] | None:
  """Peak allocated memory of each local device in MiB (GPU/TPU), or None.

  None where the backend keeps no allocator statistics (CPU: see
  `peak_rss_mb` instead).
  """
  jax = _import_jax()
  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "peak_bytes_in_use" not in stats:
      return None
    peaks.append(round(stats["peak_bytes_in_use"] / 2**20, 1))
  return peaks


def bench_train(config) -> dict[str, Any]:
  """The train step at TRAIN_SHAPE: speed, FLOP/s and utilization."""
  from musegen_jax import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from musegen_jax import models  # pylint: disable=import-outside-toplevel
  config = fixed_train_config(config)
  load_before = _load()
  result = time_train_step(config, steps=FLAGS.steps, warmup=FLAGS.warmup)
  compiled = result.pop("_compiled")
  step_s = result["step_ms"] / 1e3
  xla_flops = flops_lib.xla_flops(compiled)
  flops, source = flops_lib.train_step_flops(config, result.get("vocab_size"))
  roof_dtype = models.matmul_dtype_name(config.model)
  roof = measure_matmul_roof(FLAGS.roof_size, dtype=roof_dtype)
  if flops is None and xla_flops is not None:
    flops, source = xla_flops, "xla cost_analysis"
  out = {"bench": "train", **result, "device": device_description()}
  out.update(
      flops_per_step=flops,
      flops_source=source,
      xla_cost_analysis_flops=xla_flops,
      gflops_per_sec=None if flops is None else round(flops / step_s / 1e9, 1),
      roof_gflops=round(roof, 1),
      roof_source=(f"jax {roof_dtype} {FLAGS.roof_size}^3 matmul (float32 "
                   "sums), median of 10"),
      mfu=None if flops is None else round(flops / step_s / 1e9 / roof, 3),
      peak_rss_mb=peak_rss_mb(),
      peak_memory_mb=peak_device_memory_mb(),
      loadavg_1m_before=load_before,
      loadavg_1m_after=_load(),
      env=_environment(),
      note=("random audio in [-1, 1]; WGAN-GP" if config.task == "gan" else
            "random token batches; dropout as the default config"))
  return out


def bench_data(config) -> dict[str, Any]:
  """The real grain pipeline at the config's shape, against the train step."""
  from musegen_jax import tasks  # pylint: disable=import-outside-toplevel
  from musegen_jax import train  # pylint: disable=import-outside-toplevel
  train.check_config(config)
  out: dict[str, Any] = {"bench": "data"}
  train_eps = None
  if FLAGS.ratio_steps > 0:
    # Timed first: the grain workers below keep prefetching in the background.
    timing = time_train_step(config, steps=FLAGS.ratio_steps, warmup=1)
    timing.pop("_compiled")
    train_eps = timing["consumed_examples_per_sec"]
    out["train_step_ms"] = timing["step_ms"]
  data_dir = train.resolve_data_dir(config)
  task = tasks.create_task(config, train.load_representation(config, data_dir))
  it = iter(task.create_train_dataset(task.prepare_data(data_dir)))
  t0 = time.perf_counter()
  for _ in range(FLAGS.data_warmup):
    batch = next(it)
  warmup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(FLAGS.data_batches):
    batch = next(it)
  seconds = time.perf_counter() - t0
  examples = FLAGS.data_batches * examples_per_step(config)
  data_eps = examples / seconds
  out.update(
      representation=config.data.representation,
      **_model_shape(config, task.representation),
      batch_shape=list(next(iter(batch.values())).shape),
      num_workers=config.data.num_workers,
      batches=FLAGS.data_batches,
      warmup_batches=FLAGS.data_warmup,
      warmup_s=round(warmup_s, 2),
      examples_per_sec=round(data_eps, 1))
  if config.task != "gan":
    out["tokens_per_sec"] = round(data_eps * config.data.seq_len, 1)
  out.update(
      train_examples_per_sec=train_eps,
      data_over_train=None if not train_eps else round(data_eps / train_eps, 1),
      device=device_description(),
      peak_rss_mb=peak_rss_mb(),
      env=_environment())
  if train_eps:
    out["note"] = ("examples: training examples (clips for the GAN, every "
                   "critic update's included); train timed at the same config "
                   "shape on random batches, before the pipeline started")
  it.close()  # Stops grain's worker processes.
  return out


def _bucket(length: int, bucket: int) -> int:
  return bucket * math.ceil(length / bucket)


def bench_sample(config) -> dict[str, Any]:
  """Carried-state sampling against recomputing the whole prefix per token."""
  jax = _import_jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from musegen_jax import tasks  # pylint: disable=import-outside-toplevel
  from musegen_jax.tasks import state as state_lib  # pylint: disable=import-outside-toplevel

  representation = _representation(config)
  task = tasks.create_task(config, representation)
  params = task.init_params(
      jax.random.PRNGKey(config.seed),
      compiler_options=state_lib.initializer_compiler_options())
  batch, length = FLAGS.sample_batch, FLAGS.sample_length
  primer = jnp.full((batch, 1), task.eos_id, jnp.int32)
  rng = jax.random.PRNGKey(1)

  def carried():
    return jax.block_until_ready(task.sample(params, rng, primer, length=length))

  t0 = time.perf_counter()
  carried()
  first_s = time.perf_counter() - t0
  carried_s, carried_min_s = median_seconds(carried, FLAGS.sample_repeats)

  # Baseline: each token runs the model over the whole prefix so far, padded
  # to a multiple of `bucket` (one compiled program per padded length; the
  # model is causal, so padding does not change the logits used).
  bucket = FLAGS.baseline_bucket
  model = task.model

  def recompute_step(params, buffer, pos, rng, padded):
    logits, _ = model.apply({"params": params}, buffer[:, :padded], train=False)
    token = jax.random.categorical(rng, logits[:, pos - 1]).astype(jnp.int32)
    return buffer.at[:, pos].set(token)

  recompute = jax.jit(recompute_step, static_argnums=4)
  buffer0 = jnp.zeros((batch, length + 1), jnp.int32).at[:, 0].set(task.eos_id)
  n_measured = min(FLAGS.baseline_tokens, length)
  padded_lengths = sorted({_bucket(p, bucket) for p in range(1, length + 1)})
  keys = jax.random.split(rng, length + 1)
  t0 = time.perf_counter()
  for padded in padded_lengths:  # Compile excluded, as for the carried sampler.
    recompute(params, buffer0, 1, keys[0], padded).block_until_ready()
  baseline_compile_s = time.perf_counter() - t0

  buffer = buffer0
  t0 = time.perf_counter()
  for pos in range(1, n_measured + 1):
    buffer = recompute(params, buffer, pos, keys[pos], _bucket(pos, bucket))
  buffer.block_until_ready()
  measured_s = time.perf_counter() - t0
  # The remaining tokens: the per-call time of each longer padded length,
  # times the number of tokens that use it.
  rest_s = 0.0
  per_length_ms = {}
  for padded in padded_lengths:
    users = [p for p in range(n_measured + 1, length + 1)
             if _bucket(p, bucket) == padded]
    if not users:
      continue
    call_s, _ = median_seconds(
        lambda padded=padded: recompute(params, buffer, users[0], keys[0],
                                        padded).block_until_ready(), 2)
    per_length_ms[padded] = round(call_s * 1e3, 2)
    rest_s += call_s * len(users)
  baseline_s = measured_s + rest_s

  carried_tps = batch * length / carried_s
  return {
      "bench": "sample",
      **_model_shape(config, representation, batch=False),
      "sample_batch": batch,
      "sample_length": length,
      "tokens_per_sec": round(carried_tps, 1),
      "sample_s": round(carried_s, 3),
      "sample_s_min": round(carried_min_s, 3),
      "step_ms": round(carried_s / length * 1e3, 3),
      "compile_s": round(first_s - carried_s, 2),
      "compile_note": "first call minus the median timed call",
      "baseline": "model over the whole prefix per token, padded to a "
                  f"multiple of {bucket}",
      "baseline_tokens": n_measured,
      "baseline_measured_s": round(measured_s, 3),
      "baseline_rest_per_call_ms": per_length_ms,
      "baseline_est_s": round(baseline_s, 2),
      "baseline_tokens_per_sec": round(batch * length / baseline_s, 1),
      "baseline_compile_s": round(baseline_compile_s, 2),
      "speedup_first_baseline_tokens": round(
          measured_s / (carried_s * n_measured / length), 1),
      "speedup": round(baseline_s / carried_s, 1),
      "device": device_description(),
      "peak_rss_mb": peak_rss_mb(),
      "env": _environment(),
      "note": f"random init params; the baseline ran {n_measured} tokens, its "
              "cost for the remaining tokens is the measured per-call time of "
              "their padded length",
  }




def _rss_mb() -> float:
  """Current resident memory of this process in MiB (Linux /proc)."""
  with open("/proc/self/statm", encoding="utf-8") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_soak(config) -> dict[str, Any]:
  """The config trained for `--soak_steps` with frequent checkpoints.

  A thread samples the resident memory every 0.25 s; the figure that matters
  is the growth from just after the first checkpoint to the end (target:
  under 10%).
  """
  import tempfile  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  from musegen_jax import train  # pylint: disable=import-outside-toplevel
  config.num_train_steps = FLAGS.soak_steps
  config.checkpoint_every_steps = FLAGS.soak_checkpoint_every
  # Eval with each checkpoint: its one-time compile happens before the first
  # checkpoint, so the growth after it is the steady state.
  config.eval_every_steps = FLAGS.soak_checkpoint_every
  config.sample_every_steps = 0
  workdir = tempfile.mkdtemp(prefix="musegen_soak-")
  first_ckpt = os.path.join(workdir, "checkpoints", str(FLAGS.soak_checkpoint_every))
  samples: list[tuple[float, float, bool]] = []
  done = threading.Event()

  def sample_rss():
    while not done.wait(0.25):
      samples.append((time.perf_counter(), _rss_mb(), os.path.isdir(first_ckpt)))

  rss_start = _rss_mb()
  sampler = threading.Thread(target=sample_rss, daemon=True)
  t0 = time.perf_counter()
  sampler.start()
  train.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - t0
  done.set()
  sampler.join()
  rss_end = _rss_mb()
  after_first = [rss for _, rss, saved in samples if saved]
  rss_first = after_first[0] if after_first else None
  return {
      "bench": "soak", "steps": FLAGS.soak_steps,
      "checkpoint_every_steps": FLAGS.soak_checkpoint_every,
      "seconds": round(seconds, 1),
      "steps_per_sec": round(FLAGS.soak_steps / seconds, 1),
      "rss_start_mb": round(rss_start, 1),
      "rss_after_first_checkpoint_mb": None if rss_first is None else round(rss_first, 1),
      "rss_max_mb": round(max(rss for _, rss, _ in samples), 1) if samples else None,
      "rss_end_mb": round(rss_end, 1),
      "growth_after_first_checkpoint": (None if rss_first is None
                                        else round(rss_end / rss_first - 1, 4)),
      # RSS at each tenth of the run's wall time, to show any trend.
      "rss_timeline_mb": [round(samples[min(len(samples) - 1,
                                            i * len(samples) // 10)][1], 1)
                          for i in range(11)] if samples else [],
      "checkpoints_kept": sorted(os.listdir(os.path.join(workdir, "checkpoints"))),
      "workdir": workdir, "device": device_description(),
      "peak_rss_mb": peak_rss_mb()}


# --bench=accelerator: (job, config file in configs/, overrides). Sizes for one
# accelerator chip; --dry_run takes each file's :smoke variant instead.
ACCELERATOR_JOBS = (
    ("transformer", "transformer.py", {
        "model.d_model": 1024, "model.num_layers": 12, "model.num_heads": 16,
        "model.mlp_dim": 4096, "data.seq_len": 1024, "model.max_len": 2048,
        "model.dtype": "bfloat16", "batch_size": 16}),
    ("wavegan", "gan.py", {}),  # d 64, batch 64, 5 critic updates.
    ("lstm", "lstm.py", {"model.hidden_size": 1024, "model.num_layers": 3,
                         "model.dtype": "bfloat16"}),
    ("bigru", "bigru.py", {}),
    ("vae", "vae.py", {}),
)
# bfloat16 dense matmul peaks per chip, FLOP/s, by device kind (H200: what a
# large bfloat16 matmul reached on one; the others are the vendors' figures).
PEAK_BF16_FLOPS = {"NVIDIA H200": 790e12, "NVIDIA H100 80GB HBM3": 989e12,
                   "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12}


def _set(config, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[leaf] = value


def accelerator_configs(dry_run: bool) -> list[tuple[str, Any]]:
  """[(job, config)] of `ACCELERATOR_JOBS` from the configs/ beside the package."""
  import musegen_jax  # pylint: disable=import-outside-toplevel
  from musegen_jax import config_defaults  # pylint: disable=import-outside-toplevel
  package = os.path.dirname(os.path.abspath(musegen_jax.__file__))
  here = os.path.join(os.path.dirname(package), "configs", "_.py")
  out = []
  for job, file, overrides in ACCELERATOR_JOBS:
    config = config_defaults.sibling_config(here, file[:-3], "smoke" if dry_run else None)
    if not dry_run:
      for key, value in overrides.items():
        _set(config, key, value)
    out.append((job, config))
  return out


def _time_sampler(config) -> dict[str, Any]:
  """The sampling program of `config.sample` (`task.sample_program`), compiled
  and timed on fresh parameters."""
  jax = _import_jax()
  import numpy as np  # pylint: disable=import-outside-toplevel
  from musegen_jax import tasks  # pylint: disable=import-outside-toplevel
  from musegen_jax import train  # pylint: disable=import-outside-toplevel
  task = tasks.create_task(config, _representation(config))
  mesh = train.create_mesh(config)
  params = task.eval_params(train.create_train_state(task, config, mesh,
                                                     jax.random.PRNGKey(0)))
  count = int(config.sample.num_samples)
  fn, inputs = task.sample_program(count)
  # Token models start from a primer of one EOS token, as `sample` does.
  fill = task.eos_id if config.task == "lm" else 0
  arrays = [np.full(x.shape, fill, x.dtype) for x in inputs]
  sampler = jax.jit(fn)
  rng = jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  compiled = sampler.lower(params, rng, *arrays).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(params, rng, *arrays))
  seconds, _ = median_seconds(
      lambda: jax.block_until_ready(compiled(params, rng, *arrays)), 3)
  out = {"sample_batch": count, "sample_s": round(seconds, 4),
         "sample_compile_s": round(compile_s, 2)}
  if config.task == "gan":
    out["clips_per_sec"] = round(count / seconds, 1)
  else:
    out["sample_length"] = int(config.sample.length)
    out["sample_steps_per_sec"] = round(count * int(config.sample.length) / seconds, 1)
  return out


def bench_accelerator() -> list[dict[str, Any]]:
  """The train step and sampler of every family at accelerator sizes, a JSON
  line each: step time, examples/s, MFU against the chip's bfloat16 peak,
  compile seconds, peak memory. `--dry_run`: the smoke sizes (any machine)."""
  from musegen_jax import flops as flops_lib  # pylint: disable=import-outside-toplevel
  jax = _import_jax()
  kind = jax.devices()[0].device_kind
  peak = FLAGS.peak_tflops * 1e12 or PEAK_BF16_FLOPS.get(kind)
  peak_source = "--peak_tflops" if FLAGS.peak_tflops else "PEAK_BF16_FLOPS"
  if peak is None:
    peak = measure_matmul_roof(FLAGS.roof_size, dtype="bfloat16") * 1e9
    peak_source = f"measured: jax bfloat16 {FLAGS.roof_size}^3 matmul"
  steps, warmup = (2, 1) if FLAGS.dry_run else (FLAGS.steps, FLAGS.warmup)
  rows = []
  for job, config in accelerator_configs(FLAGS.dry_run):
    result = time_train_step(config, steps=steps, warmup=warmup)
    compiled = result.pop("_compiled")
    flops, source = flops_lib.train_step_flops(config, result.get("vocab_size"))
    if flops is None:
      flops, source = flops_lib.xla_flops(compiled), "xla cost_analysis"
    step_s = result["step_ms"] / 1e3
    row = {"bench": "accelerator", "job": job, "dry_run": FLAGS.dry_run, **result,
           "flops_per_step": flops, "flops_source": source,
           "tflops_per_sec": None if flops is None else float(f"{flops / step_s / 1e12:.4g}"),
           "peak_tflops": float(f"{peak / 1e12:.4g}"), "peak_source": peak_source,
           "mfu": None if flops is None else round(flops / step_s / peak, 4)}
    row.update(_time_sampler(config))
    row.update(peak_memory_mb=peak_device_memory_mb(), peak_rss_mb=peak_rss_mb(),
               device=device_description())
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


BENCHMARKS = {"train": bench_train, "data": bench_data, "sample": bench_sample,
              "soak": bench_soak}


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses extra arguments.
  if FLAGS.bench == "accelerator":
    bench_accelerator()  # Its jobs are fixed; a line per job as it finishes.
    return
  if FLAGS.config is None:
    raise errors.UserError(f"--bench={FLAGS.bench} needs --config=FILE[:variant]")
  result = BENCHMARKS[FLAGS.bench](FLAGS.config)
  print(json.dumps(result), flush=True)


def run() -> None:
  """Console-script entry point (huge-page malloc first, as `main` does; no
  compilation cache: compile_s is the compiler's time)."""
  runtime.setup(hugepages=True)
  cli.run(main)


if __name__ == "__main__":
  run()
