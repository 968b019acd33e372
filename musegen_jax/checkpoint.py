"""Training checkpoints (orbax) and self-contained export bundles.

A training checkpoint holds the train state and the grain data iterator's
state, so a restarted run continues with the same batches. Checkpoints are
written asynchronously; orbax writes each into a temporary directory and
renames it when complete, so a half-written one is never restored.

An export bundle is what sampling needs and nothing else: parameters (orbax
arrays), the config as JSON and the representation's settings as JSON. No
pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

BUNDLE_FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"


def create_manager(directory: str, *, keep: int, async_save: bool = True
                   ) -> ocp.CheckpointManager:
  """A manager keeping the newest `keep` checkpoints plus the best valid loss."""
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=keep),
      ocp.checkpoint_managers.BestN(
          get_metric_fn=_valid_loss, reverse=True, n=1,
          keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, enable_async_checkpointing=async_save,
      # Setting best_fn makes orbax write each step's metrics to disk, so the
      # best checkpoint is still known (and kept) after a restart.
      best_fn=_valid_loss, best_mode="min",
      create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_names=("state", "data"),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler()})


def _valid_loss(metrics: dict[str, float]) -> float:
  return metrics["valid_loss"]


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: Any, *, valid_loss: float | None = None,
         force: bool = False) -> bool:
  """Saves state and data iterator at `step` (asynchronously).

  A step without an eval is recorded with an infinite valid loss: never the
  best, kept only while it is among the newest.
  """
  metrics = {"valid_loss": math.inf if valid_loss is None else float(valid_loss)}
  return manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iter)),
      metrics=metrics, force=force)


def best_step(manager: ocp.CheckpointManager) -> int | None:
  """The kept step with the lowest valid loss, or None when none has one."""
  scored = [(metrics["valid_loss"], step) for step in manager.all_steps()
            if (metrics := manager.metrics(step))
            and math.isfinite(metrics.get("valid_loss", math.inf))]
  return min(scored)[1] if scored else None


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any) -> tuple[Any, int] | None:
  """Restores the newest checkpoint into `data_iter` and a new state.

  Args:
    manager: the run's checkpoint manager.
    abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings (from
      `jax.eval_shape`), giving where each restored array goes.
    data_iter: the grain iterator; its position is restored in place.

  Returns:
    (state, step), or None when the directory has no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored["state"], step


@dataclasses.dataclass(frozen=True)
class Bundle:
  """A loaded export: what sampling needs without the training run."""
  params: Any
  config: ml_collections.ConfigDict
  representation: dict[str, Any]
  step: int


def export_bundle(output_dir: str, *, params: Any,
                  config: ml_collections.ConfigDict,
                  representation: dict[str, Any], step: int) -> str:
  """Writes a self-contained sampling bundle and returns its directory.

  Args:
    output_dir: where to write; created, and must not already hold a bundle.
    params: the parameter pytree to sample with.
    config: the training config (stored as JSON).
    representation: {"name": ..., "settings": {...}} of the data encoding.
    step: the training step the parameters come from.
  """
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(os.path.join(output_dir, BUNDLE_FILE)):
    raise FileExistsError(f"{output_dir} already holds an export bundle; "
                          "choose another --output or delete it.")
  os.makedirs(output_dir, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(output_dir, "params"),
                    jax.device_get(params))
  checkpointer.wait_until_finished()
  _write_json(os.path.join(output_dir, "config.json"), config.to_dict())
  _write_json(os.path.join(output_dir, "representation.json"), representation)
  # Written last: its presence marks a complete bundle.
  _write_json(os.path.join(output_dir, BUNDLE_FILE),
              {"format_version": BUNDLE_FORMAT_VERSION, "step": int(step),
               "task": config.task, "model": config.model.name})
  return output_dir


def load_bundle(export_dir: str) -> Bundle:
  """Loads a bundle written by `export_bundle`, with clear errors."""
  export_dir = os.path.abspath(export_dir)
  info_path = os.path.join(export_dir, BUNDLE_FILE)
  if not os.path.exists(info_path):
    raise FileNotFoundError(
        f"{export_dir} is not an export bundle (no {BUNDLE_FILE}); write one "
        "with `python -m musegen_jax.export --workdir=RUN --output=DIR`.")
  info = _read_json(info_path)
  if info.get("format_version") != BUNDLE_FORMAT_VERSION:
    raise ValueError(
        f"{export_dir}: bundle format_version {info.get('format_version')!r}, "
        f"this musegen_jax reads {BUNDLE_FORMAT_VERSION}.")
  config = ml_collections.ConfigDict(
      _read_json(os.path.join(export_dir, "config.json")))
  representation = _read_json(os.path.join(export_dir, "representation.json"))
  params = ocp.StandardCheckpointer().restore(os.path.join(export_dir, "params"))
  return Bundle(params=params, config=config, representation=representation,
                step=int(info["step"]))


def _write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def with_sharding(abstract_tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Gives every leaf of an abstract pytree (from eval_shape) `sharding`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract_tree)
