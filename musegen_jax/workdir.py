"""Guards on a training workdir: one live run at a time, compatible configs.

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
# Keys (dotted, prefixes) whose change makes existing checkpoints incompatible.
# (ema_decay: turning the parameter average on or off changes the state.)
INCOMPATIBLE_KEYS = ("task", "model", "data.dir", "data.representation",
                     "data.frame_model", "ema_decay")


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
  path = os.path.join(workdir, LOCK_FILE)
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
  path = os.path.join(workdir, CONFIG_FILE)
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
