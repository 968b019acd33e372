"""Training checkpoints (orbax) and self-contained export bundles.

A training checkpoint holds the train state and the grain data iterator's
state, so a restarted run continues with the same batches. Checkpoints are
written asynchronously; orbax writes each into a temporary directory and
renames it when complete, so a half-written one is never restored.

An export bundle is what sampling needs and nothing else: parameters (orbax
arrays under params/, a Hub-layout model.safetensors, or both), the config
as JSON, the representation's settings as JSON and a model card (README.md;
`hub.py`). No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging as std_logging
import math
import os
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from musegen_jax import errors
from musegen_jax.data import shards

# 2: the parameters as orbax arrays and/or model.safetensors, listed under
# "formats", and README.md. Version 1 (orbax only) bundles still load.
BUNDLE_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
BUNDLE_FILE = "bundle.json"
EXTRAS_FILE = "extras.json"
# The parameter formats of a bundle; `export --format` takes these or "both".
PARAM_FORMATS = ("orbax", "safetensors")
EXPORT_FORMATS = ("orbax", "safetensors", "both")


def create_manager(directory: str, *, keep: int, async_save: bool = True
                   ) -> ocp.CheckpointManager:
  """A manager keeping the newest `keep` checkpoints plus the best valid loss.

  Steps whose metadata cannot be read are moved aside first (see
  `restore_latest`), as orbax would fail to open the directory.
  """
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
  _one_writer_per_array_on_one_host()
  directory = os.path.abspath(directory)
  damaged = _unreadable_metadata(directory)
  for step, reason in damaged:
    logging.warning("Skipping damaged checkpoint step %d in %s: %s", step,
                    directory, reason)
  _move_aside(directory, [step for step, _ in damaged])
  return ocp.CheckpointManager(
      directory, options=options,
      item_names=("state", "data"),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler()})


def _one_writer_per_array_on_one_host() -> None:
  """Turns off orbax's replica-parallel writes when there is one process.

  By default orbax splits each replicated array among its replicas so that
  several hosts write parts of it at once. On one host that buys nothing,
  and each part is cut by its own small program compiled for its device:
  on 8 CPU devices the first save of a model took 3-5 s instead of 0.1-0.2 s,
  paid again in every new process and for every new set of array shapes.
  With several processes, orbax's default stays.

  orbax sets this per `ArrayHandler` in its global type registry, so this
  replaces the registered handler with one that differs only in that flag.
  """
  if jax.process_count() > 1:
    return
  current = ocp.type_handlers.get_type_handler(jax.Array)
  if not getattr(current, "_use_replica_parallel", True):
    return
  handler = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False,
      # The default handler's per-array metadata store, kept as it is.
      array_metadata_store=getattr(current, "_array_metadata_store", None))
  def quiet(record: std_logging.LogRecord) -> bool:
    """Drops orbax's warning for every override: this one is on purpose."""
    return "overriding" not in record.getMessage()

  absl_logger = std_logging.getLogger("absl")
  absl_logger.addFilter(quiet)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.removeFilter(quiet)


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


DAMAGED_DIR = "damaged_checkpoints"


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any) -> tuple[Any, int] | None:
  """Restores the newest readable checkpoint into `data_iter` and a new state.

  A checkpoint that cannot be read (truncated or deleted files) is skipped
  with a warning naming its step and the error, and moved aside to
  `<checkpoints>/../damaged_checkpoints/STEP` so the resumed run can save
  that step again; the next older one is tried.

  Args:
    manager: the run's checkpoint manager.
    abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings (from
      `jax.eval_shape`), giving where each restored array goes.
    data_iter: the grain iterator; its position is restored in place.

  Returns:
    (state, step), or None when the directory has no checkpoint.

  Raises:
    RuntimeError: checkpoints exist but none can be read; training does not
      silently start over.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              data=grain.checkpoint.CheckpointRestore(data_iter)))
    except Exception as e:  # pylint: disable=broad-except
      # orbax and tensorstore raise many types for unreadable files.
      first_line = str(e).splitlines()[0] if str(e) else ""
      reason = f"{type(e).__name__}: {first_line[:300]}"
      logging.warning("Skipping damaged checkpoint step %d in %s: %s", step,
                      manager.directory, reason)
      damaged.append((step, reason))
      continue
    if damaged:
      _move_aside(manager.directory, [s for s, _ in damaged])
      manager.reload()
    return restored["state"], step
  if damaged:
    details = "; ".join(f"step {s}: {r}" for s, r in damaged)
    raise RuntimeError(
        f"No readable checkpoint in {manager.directory} ({details}). Not "
        "starting over on top of them: move that directory away to train "
        "from scratch.")
  return None


def _move_aside(directory: str, steps: list[int]) -> None:
  """Moves damaged step directories to `<directory>/../damaged_checkpoints`."""
  if not steps:
    return
  directory = os.fspath(directory)
  if jax.process_index() == 0:
    target = os.path.join(os.path.dirname(directory), DAMAGED_DIR)
    os.makedirs(target, exist_ok=True)
    for step in steps:
      os.replace(os.path.join(directory, str(step)),
                 os.path.join(target, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"))
  multihost_utils.sync_global_devices("musegen_jax:damaged_checkpoints_moved")


def _unreadable_metadata(directory: str) -> list[tuple[int, str]]:
  """Finished steps whose JSON metadata (read when a manager opens) is broken."""
  damaged = []
  if not os.path.isdir(directory):
    return damaged
  for name in sorted(os.listdir(directory)):
    if not name.isdigit():
      continue
    for relpath in ("_CHECKPOINT_METADATA", os.path.join("metrics", "metrics")):
      path = os.path.join(directory, name, relpath)
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except (OSError, ValueError) as e:
        damaged.append((int(name), f"{relpath}: {type(e).__name__}: {e}"))
        break
  return damaged


@dataclasses.dataclass(frozen=True)
class Bundle:
  """A loaded export: what sampling needs without the training run."""
  params: Any
  config: ml_collections.ConfigDict
  representation: dict[str, Any]
  step: int
  # What the task computed from the data at export (`bundle_extras`; the
  # VAE's per-style mean latents), from extras.json; {} when none.
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def export_formats(export_format: str) -> tuple[str, ...]:
  """The parameter formats `--format=export_format` writes.

  Raises:
    errors.UserError: not one of EXPORT_FORMATS (one line naming the flag).
  """
  if export_format not in EXPORT_FORMATS:
    raise errors.UserError(f"--format={export_format!r}: use one of "
                           f"{', '.join(EXPORT_FORMATS)}.")
  return PARAM_FORMATS if export_format == "both" else (export_format,)


def export_bundle(output_dir: str, *, params: Any,
                  config: ml_collections.ConfigDict,
                  representation: dict[str, Any], step: int,
                  export_format: str = "both",
                  model_card: str | None = None,
                  extras: dict[str, Any] | None = None) -> str:
  """Writes a self-contained sampling bundle and returns its directory.

  Args:
    output_dir: where to write; created, and must not already hold a bundle.
    params: the parameter pytree to sample with.
    config: the training config (stored as JSON).
    representation: {"name": ..., "settings": {...}} of the data encoding.
    step: the training step the parameters come from.
    export_format: "orbax" (params/), "safetensors" (model.safetensors,
      keys the parameter paths joined with ".") or "both".
    model_card: README.md's text; None writes `hub.model_card` from the
      config alone (export.py adds the run's evaluations).
    extras: JSON the task computed from the data for sampling (its
      `bundle_extras`), written as extras.json when not empty.
  """
  from musegen_jax import hub  # pylint: disable=import-outside-toplevel

  formats = export_formats(export_format)
  output_dir = os.path.abspath(output_dir)
  check_bundle_output(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  params = jax.device_get(params)
  if "orbax" in formats:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(output_dir, "params"), params)
    checkpointer.wait_until_finished()
  if "safetensors" in formats:
    hub.write_safetensors(
        os.path.join(output_dir, hub.SAFETENSORS_FILE), params,
        {"format": "flax", "library": "musegen_jax",
         "bundle_format_version": BUNDLE_FORMAT_VERSION, "step": int(step),
         "task": config.task, "model": config.model.name})
  shards.write_json_atomic(os.path.join(output_dir, "config.json"), config.to_dict())
  shards.write_json_atomic(os.path.join(output_dir, "representation.json"), representation)
  if extras:
    shards.write_json_atomic(os.path.join(output_dir, EXTRAS_FILE), extras)
  if model_card is None:
    model_card = hub.model_card(config, representation, step=int(step),
                                params=params, formats=formats)
  _write_text_atomic(os.path.join(output_dir, hub.MODEL_CARD_FILE), model_card)
  # Written last: its presence marks a complete bundle. The checksums let
  # load_bundle refuse a file changed or cut after export.
  shards.write_json_atomic(os.path.join(output_dir, BUNDLE_FILE),
              {"format_version": BUNDLE_FORMAT_VERSION, "step": int(step),
               "task": config.task, "model": config.model.name,
               "formats": list(formats), "sha256": _checksums(output_dir)})
  return output_dir


def _write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def check_bundle_output(output_dir: str) -> None:
  """Raises errors.ExistingOutputError unless a bundle can be written there."""
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise errors.ExistingOutputError(
        f"--output={output_dir} is a file; name a new directory.")
  if os.path.exists(os.path.join(output_dir, BUNDLE_FILE)):
    raise errors.ExistingOutputError(
        f"--output={output_dir} already holds an export bundle; choose "
        "another --output or delete it.")


def _checksums(directory: str) -> dict[str, str]:
  """{relative path: sha256} of every file below `directory` but bundle.json."""
  sums = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      relpath = os.path.relpath(path, directory)
      if relpath != BUNDLE_FILE:
        with open(path, "rb") as f:
          sums[relpath] = hashlib.sha256(f.read()).hexdigest()
  return dict(sorted(sums.items()))


def load_bundle(export_dir: str, param_format: str | None = None) -> Bundle:
  """Loads a bundle written by `export_bundle`, with clear errors.

  Args:
    export_dir: the bundle's directory.
    param_format: which parameters to read, "orbax" or "safetensors"; None
      reads orbax when the bundle has it (the arrays and tree exactly as
      saved, without building the model), else model.safetensors, whose
      flat keys are put back into the tree of the config's model
      (`hub.expected_params`) and checked against its shapes.

  Returns:
    A Bundle whose params are the nested dict of arrays either way.

  Raises:
    errors.UserError: not a bundle, a format version this code does not read,
      a file changed since export, the format asked for is absent, or
      safetensors tensors that do not fit the config's model.
  """
  from musegen_jax import hub  # pylint: disable=import-outside-toplevel

  export_dir = os.path.abspath(export_dir)
  info_path = os.path.join(export_dir, BUNDLE_FILE)
  if not os.path.exists(info_path):
    raise errors.MissingInputError(
        f"--export={export_dir} is not an export bundle (no {BUNDLE_FILE}); "
        "write one with `python -m musegen_jax.export --workdir=RUN --output=DIR`.")
  try:
    info = _read_json(info_path)
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.UserError(f"--export={export_dir}: {BUNDLE_FILE} is not valid "
                           f"JSON ({e}): the bundle is damaged; export it "
                           "again.") from None
  version = info.get("format_version") if isinstance(info, dict) else None
  if version not in READABLE_FORMAT_VERSIONS:
    raise errors.UserError(
        f"--export={export_dir}: bundle format_version {version!r}, this "
        f"musegen_jax reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))}.")
  expected, found = info.get("sha256", {}), _checksums(export_dir)
  changed = sorted(p for p in set(expected) | set(found)
                   if expected.get(p) != found.get(p))
  if changed:
    raise errors.UserError(
        f"--export={export_dir}: files changed, added or missing since export "
        f"({', '.join(changed)}); refusing to load it. Export it again.")
  formats = info.get("formats", ["orbax"])  # Version 1: orbax only.
  if param_format is None:
    param_format = "orbax" if "orbax" in formats else "safetensors"
  if param_format not in formats:
    raise errors.UserError(
        f"--export={export_dir} holds no {param_format!r} parameters (it has "
        f"{', '.join(formats)}).")
  config = ml_collections.ConfigDict(
      _read_json(os.path.join(export_dir, "config.json")))
  representation = _read_json(os.path.join(export_dir, "representation.json"))
  if param_format == "orbax":
    params = ocp.StandardCheckpointer().restore(os.path.join(export_dir, "params"))
  else:
    path = os.path.join(export_dir, hub.SAFETENSORS_FILE)
    tensors, _ = hub.read_safetensors(path)
    params = hub.unflatten_params(hub.expected_params(config, representation),
                                  tensors, source=path)
  extras_path = os.path.join(export_dir, EXTRAS_FILE)
  extras = _read_json(extras_path) if os.path.exists(extras_path) else {}
  return Bundle(params=params, config=config, representation=representation,
                step=int(info["step"]), extras=extras)


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def with_sharding(abstract_tree: Any, sharding: Any) -> Any:
  """Gives the leaves of an abstract pytree (from eval_shape) their shardings.

  Args:
    abstract_tree: a pytree of arrays or `jax.ShapeDtypeStruct`.
    sharding: one `jax.sharding.Sharding` for every leaf, or a pytree of them
      with the structure of `abstract_tree` (e.g. `train.state_shardings`),
      which restores a checkpoint onto a different mesh than it was written
      from.
  """
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract_tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_tree, sharding)
