"""A training workdir: its layout, one live run at a time, compatible configs.

- `Layout(workdir)` names every file and folder a run writes there; train,
  export, the metric writer and the plots all find them through it.

- `hold(workdir)` takes an exclusive lock (`WORKDIR/.lock`, `flock`, released
  by the OS even when the process is killed) for the whole run; a second run
  on the same workdir is refused with the holder's host, pid and start time.
  The file is removed when the run ends.
- `check_config(workdir, config)` compares a resumed run's config with the
  one the workdir was trained with: a change of task, model, data source or
  representation would make the checkpoints meaningless, so it is refused
  unless explicitly allowed; other changes are listed as a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Any, Iterator

from absl import logging
from ml_collections import config_dict

from musegen_jax import errors

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
REPRESENTATION_FILE = "representation.json"


class Layout:
  """Where a run keeps what it writes under its workdir."""

  def __init__(self, root: str):
    self.root = root

  def _path(self, *names: str) -> str:
    return os.path.join(self.root, *names)

  @property
  def config(self) -> str:
    """The run's config, as JSON (export and resume read it)."""
    return self._path(CONFIG_FILE)

  @property
  def representation(self) -> str:
    """The data representation's spec, as JSON (export reads it)."""
    return self._path(REPRESENTATION_FILE)

  @property
  def checkpoints(self) -> str:
    """orbax's checkpoint folder: one subfolder per saved step."""
    return self._path("checkpoints")

  def samples(self, step: int) -> str:
    """The samples written at `step`."""
    return self._path("samples", str(step))

  @property
  def commands(self) -> str:
    """The command line of each launch of the run, one per line (the model
    card's "Trained with")."""
    return self._path("commands.txt")

  @property
  def train_log(self) -> str:
    """One JSON line per training step and per eval."""
    return self._path("train_log.jsonl")

  @property
  def tensorboard(self) -> str:
    return self._path("tensorboard")

  @property
  def wandb(self) -> str:
    """wandb's own folder (offline runs, media), with log_to=...,wandb."""
    return self._path("wandb")

  @property
  def wandb_run_id(self) -> str:
    """The wandb run id, kept so that a resumed run continues the same run."""
    return self._path("wandb_run_id")

  @property
  def learning_curve(self) -> str:
    """The task's valid figures against step and wall time, redrawn per eval."""
    return self._path("learning_curve.png")

  @property
  def lock(self) -> str:
    return self._path(LOCK_FILE)

  def has_checkpoint(self) -> bool:
    """Whether any step has been saved."""
    try:
      return any(name.isdigit() for name in os.listdir(self.checkpoints))
    except (FileNotFoundError, NotADirectoryError):
      return False
# Keys (dotted, prefixes) whose change makes existing checkpoints incompatible.
# (ema_decay: turning the parameter average on or off changes the state;
# gan.lr_end_factor: a decaying rate keeps a schedule count in Adam's state,
# a constant one does not.)
INCOMPATIBLE_KEYS = ("task", "model", "data.dir", "data.representation",
                     "data.frame_model", "data.miditok", "ema_decay", "styles",
                     "condition.enabled", "gan.lr_end_factor")


class WorkdirInUseError(RuntimeError):
  """Another live run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock for the duration of the block.

  The lock file is removed when the block ends (even by an exception), while
  still locked; a run that found it and locked it meanwhile sees that the
  file it locked is no longer the one at the path and tries again. A killed
  run leaves the file behind, unlocked and harmless.
  """
  os.makedirs(workdir, exist_ok=True)
  path = Layout(workdir).lock
  while True:
    f = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      f.close()
      raise WorkdirInUseError(
          f"{workdir} is in use by another run ({holder}); stop that run or "
          "choose another --workdir.") from None
    if _same_file(f, path):
      break
    f.close()  # Removed by the run that held it: lock the new file.
  try:
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    f.flush()
    yield
  finally:
    try:
      os.remove(path)
    except OSError:
      pass
    f.close()  # Releases the lock.


def _same_file(f, path: str) -> bool:
  """Whether the open file `f` is still the file at `path`."""
  try:
    return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
  except FileNotFoundError:
    return False


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple]:
  """{dotted key: (old value, new value)} for every key that differs."""
  old_flat, new_flat = _flatten(old), _flatten(new)
  return {k: (old_flat.get(k), new_flat.get(k))
          for k in sorted(set(old_flat) | set(new_flat))
          if old_flat.get(k) != new_flat.get(k)}


def check_config(workdir: str, config: config_dict.ConfigDict, *,
                 allow_change: bool = False) -> None:
  """Refuses to resume `workdir` with an incompatible config.

  Args:
    workdir: a workdir that may hold an earlier run's config.json.
    config: the config of the run about to start.
    allow_change: resume even when task, model, data dir or representation
      changed (the checkpoint must still fit the new model).

  Raises:
    ValueError: an incompatible change, naming each key with both values.
  """
  path = Layout(workdir).config
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    old = json.load(f)
  # Compared as written (JSON): tuples, such as logical_axis_rules' pairs,
  # come back as lists and are no change.
  changes = config_changes(old, json.loads(json.dumps(config.to_dict())))
  if not changes:
    return
  described = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
  incompatible = [k for k in changes
                  if any(k == p or k.startswith(p + ".") for p in INCOMPATIBLE_KEYS)]
  if incompatible and not allow_change:
    raise errors.UserError(
        f"{workdir} was trained with a different config ({described}). "
        f"{', '.join(incompatible)} cannot change under existing checkpoints: "
        "use another --workdir, or pass --allow_config_change to resume "
        "anyway.")
  logging.warning("Config changed since the last run in %s: %s", workdir, described)
