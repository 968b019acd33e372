"""Training objectives, one file each: each gives init, train_step, eval_step, sample."""

from __future__ import annotations

from typing import Any

from ml_collections import config_dict

TASKS = ("lm",)


def create_task(config: config_dict.ConfigDict, representation: Any):
  """Builds the task named by `config.task`."""
  if config.task == "lm":
    from musegen_jax.tasks import lm
    return lm.LanguageModelTask(config, representation)
  raise ValueError(f"config.task={config.task!r}; known tasks: {list(TASKS)}")
