"""The config every job starts from, and the sections jobs share.

Each base file in configs/ (lstm.py, jsb_lstm.py, gan.py) starts from
`default_config(task)`, adds its model and data sections and sets the values
it needs; single-network tasks also `add_schedule`. Other files build on a
base file (`sibling_config`).
"""

from __future__ import annotations

from ml_collections import config_dict

# Flax logical axis names of the parameters -> mesh axis (or None:
# replicated). A dimension that does not divide by its mesh axis size stays
# whole.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("embed", "fsdp"), ("hidden", "fsdp"), ("mlp", "fsdp"), ("conv_out", "fsdp"),
    ("vocab", None), ("heads", None), ("head_dim", None), ("gates", None),
    ("conv_in", None), ("kernel", None), ("latent", None))


def default_config(task: str) -> config_dict.ConfigDict:
  """The keys every task reads, at defaults the files in configs/ override.

  - task: the objective, musegen_jax/tasks/<task>.py; seed: the global RNG
    seed.
  - batch_size: the global batch over all devices and hosts (per update);
    num_train_steps; learning_rate; Adam's adam_b1 and adam_b2.
  - nonfinite: a NaN/Inf loss or gradient is never applied. "stop": fail
    naming the step and the last good checkpoint; "skip": go on and count
    skipped updates.
  - log_every_steps; eval_every_steps; num_eval_batches (valid batches per
    eval, -1: the task's whole split or its default);
    checkpoint_every_steps; keep_checkpoints (the newest this many, plus
    the best by the task's valid metric); sample_every_steps (0: never):
    samples to WORKDIR/samples/STEP/ and TensorBoard.
  - checkpoint_every_minutes: > 0 also saves when this many minutes have
    passed since the last save, by process 0's clock (long pod runs; 0:
    steps only).
  - log_to: comma-separated metric sinks, "tensorboard" and/or "wandb"
    (wandb is an optional install; offline unless configured).
  - init_from: an export bundle of the same task and model whose parameters
    start the run (fine-tuning; read only while the workdir has no
    checkpoint; "" = from scratch); init_from_keys: a regex searched in the
    "/"-joined parameter paths ("lstm_0/w_ih") restricting what is copied
    ("" = all that match in shape); freeze: such a regex of parameters kept
    fixed during training ("" = none; not the GAN). See `warm_start`.
  - parallelism, mesh, logical_axis_rules, grad_accum_steps:
    `add_parallelism`.
  """
  config = config_dict.ConfigDict()
  config.task = task
  config.seed = 0
  config.batch_size = 32
  config.num_train_steps = 20_000
  config.learning_rate = 2e-3
  config.adam_b1 = 0.9
  config.adam_b2 = 0.98
  config.nonfinite = "stop"
  config.log_every_steps = 50
  config.eval_every_steps = 1_000
  config.num_eval_batches = -1
  config.checkpoint_every_steps = 1_000
  config.keep_checkpoints = 3
  config.sample_every_steps = 2_000
  config.checkpoint_every_minutes = 0.0
  config.log_to = "tensorboard"
  config.init_from = ""
  config.init_from_keys = ""
  config.freeze = ""
  add_parallelism(config)
  return config


def add_schedule(config: config_dict.ConfigDict) -> None:
  """The schedule and regularisation of single-network tasks (lm, pianoroll,
  vae; `tasks.optim.create_optimizer`).

  - warmup_steps: linear warmup to learning_rate, then cosine decay to
    end_learning_rate_factor x learning_rate at num_train_steps.
  - weight_decay (AdamW, decoupled); grad_clip_norm (global norm).
  - ema_decay: > 0 keeps an exponential moving average of the parameters
    with this decay, which evaluation, samples and export use (0: off).
  """
  config.warmup_steps = 500
  config.end_learning_rate_factor = 0.05
  config.weight_decay = 0.01
  config.grad_clip_norm = 1.0
  config.ema_decay = 0.0


def add_parallelism(config: config_dict.ConfigDict) -> None:
  """Adds `parallelism`, `mesh`, `logical_axis_rules` and `grad_accum_steps`.

  - parallelism: "jit", one program over a mesh of all devices (data x fsdp
    axes); or "pmap", the state replicated on every device of one process,
    gradients summed/averaged over devices. Both give the same update on the
    same global batch (up to per-device randomness: dropout, phase shuffle).
  - mesh.fsdp: the jit mesh is data = devices / fsdp. fsdp > 1 also splits
    parameters and optimizer state over fsdp devices (logical_axis_rules);
    the batch is split over both axes. A size that does not divide the
    devices fails before compile.
  - logical_axis_rules: [(logical name, mesh axis or None)]; names: vocab,
    embed, mlp, heads, head_dim, hidden, gates, conv_in, conv_out, kernel,
    latent.
  - grad_accum_steps: micro-batches per update (a lax.scan inside the step;
    for the GAN per critic update and per generator update): the same update
    with 1 / grad_accum_steps of the activation memory. batch_size must be a
    multiple of grad_accum_steps x devices.
  """
  config.parallelism = "jit"
  config.mesh = config_dict.ConfigDict()
  config.mesh.fsdp = 1
  config.logical_axis_rules = [tuple(rule) for rule in DEFAULT_LOGICAL_AXIS_RULES]
  config.grad_accum_steps = 1


def sibling_config(config_file: str, name: str, arg: str | None):
  """`get_config(arg)` of configs/<name>.py, the file beside `config_file`.

  For a config that is another with a few fields changed (configs/jsb_gru.py
  is configs/jsb_lstm.py with a GRU), so the shared fields live in one place.
  """
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"musegen_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
