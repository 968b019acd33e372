"""Config sections every job shares, added by the files in configs/."""

from __future__ import annotations

from ml_collections import config_dict

# Flax logical axis names of the parameters -> mesh axis (or None:
# replicated). A dimension that does not divide by its mesh axis size stays
# whole.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("embed", "fsdp"), ("hidden", "fsdp"), ("mlp", "fsdp"), ("conv_out", "fsdp"),
    ("vocab", None), ("heads", None), ("head_dim", None), ("gates", None),
    ("conv_in", None), ("kernel", None), ("latent", None))


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
