"""Training objectives, one file each, looked up by `config.task`.

What a task module and its task class give, and what the loop uses of them,
is `tasks/base.py`: the `Task` protocol, the optional members beside it, and
`SingleNetworkTask`, the base of the one-network tasks (lm, pianoroll, vae).
What the tasks share lives by concern: `state` (train state, EMA, guarded
update), `optim` (schedule and AdamW), `steps` (micro-batches and summed
gradients), `checks` (config ranges) and `samples` (writing MIDI, WAV, PNG).
"""

from __future__ import annotations

import importlib
from typing import Any

from ml_collections import config_dict

# config.task -> (module, class).
TASKS = {"lm": ("musegen_jax.tasks.lm", "LanguageModelTask"),
         "pianoroll": ("musegen_jax.tasks.pianoroll", "PianorollTask"),
         "gan": ("musegen_jax.tasks.gan", "GANTask"),
         "vae": ("musegen_jax.tasks.vae", "VAETask"),
         "classify": ("musegen_jax.tasks.classify", "ClassifyTask")}


def _lookup(name: str) -> tuple[Any, str]:
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}; known tasks: {sorted(TASKS)}")
  module, cls = TASKS[name]
  return importlib.import_module(module), cls


def fill_defaults(config: config_dict.ConfigDict) -> None:
  """Adds the task's keys that `config` lacks (`CONFIG_DEFAULTS` of the task
  module: keys added after bundles were exported), so older bundles load."""
  module, _ = _lookup(config.task)
  for key, value in getattr(module, "CONFIG_DEFAULTS", {}).items():
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      if name not in node:
        with node.unlocked():
          node[name] = config_dict.ConfigDict()
      node = node[name]
    if leaf not in node:
      with node.unlocked():
        node[leaf] = value


def check_config(config: config_dict.ConfigDict) -> None:
  """Checks the task's own config keys before anything is compiled."""
  module, _ = _lookup(config.task)
  fill_defaults(config)
  module.check_config(config)


def configure_from_data(config: config_dict.ConfigDict, data_dir: str) -> None:
  """The task module's `configure_from_data(config, data_dir)`, where it has
  one: config keys that follow from the dataset (the classifier's styles)."""
  module, _ = _lookup(config.task)
  configure = getattr(module, "configure_from_data", None)
  if configure is not None:
    configure(config, data_dir)


def create_task(config: config_dict.ConfigDict, representation: Any):
  """Builds the task named by `config.task`."""
  module, cls = _lookup(config.task)
  fill_defaults(config)
  return getattr(module, cls)(config, representation)


def evaluate_num_batches(config: config_dict.ConfigDict) -> int:
  """Eval batches for `evaluate` without --num_batches: the task module's
  `evaluate_num_batches(config)`, else `config.num_eval_batches`."""
  module, _ = _lookup(config.task)
  chooser = getattr(module, "evaluate_num_batches", None)
  return chooser(config) if chooser else config.num_eval_batches
