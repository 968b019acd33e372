"""Fine-tuning: a run that starts from an export bundle's parameters, and
parameters kept fixed while it trains.

`config.init_from=BUNDLE` copies the bundle's parameters into a fresh train
state before the first step, when the workdir has no checkpoint yet (once the
run has saved, it resumes from its own checkpoints and `init_from` is not
read again, so a resumed fine-tune repeats an uninterrupted one exactly). The
optimizer state starts fresh; a parameter average (`ema_decay` > 0) starts at
the copied values. A parameter the bundle lacks, or whose shape differs (a
new vocabulary changes the embedding and the output layer), keeps its fresh
initialisation; `summary` says which were copied and which were not.

Parameters are named by their path in the parameter tree, the keys joined
with "/" as Flax's `traverse_util.flatten_dict(sep="/")` does:
"embed/embedding", "lstm_0/w_ih", "head/kernel". `config.init_from_keys` and
`config.freeze` are regular expressions searched (`re.search`) in these
paths: `init_from_keys="^lstm_"` copies the recurrent layers only,
`freeze="^embed/|^lstm_0/"` keeps the embedding and the first layer fixed
(`tasks/optim.py` gives frozen parameters zero updates, weight decay
included).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from musegen_jax import errors

SEPARATOR = "/"
# The config keys holding a regular expression over parameter paths.
PATTERN_KEYS = ("init_from_keys", "freeze")
# Names listed in the one-line summary before "... and N more".
_LISTED = 8


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def path_string(key_path: tuple[Any, ...]) -> str:
  """A parameter's path in the tree as "/"-joined keys ("head/kernel")."""
  return SEPARATOR.join(_key_name(k) for k in key_path)


def flatten(params: Any) -> dict[str, Any]:
  """{path: leaf} of a parameter tree; `nn.Partitioned` boxes are leaves."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)
  return {path_string(path): leaf for path, leaf in leaves}


def _shape(leaf: Any) -> tuple[int, ...]:
  return tuple(np.shape(leaf.value if _is_box(leaf) else leaf))


def compile_pattern(config: config_dict.ConfigDict, key: str) -> re.Pattern | None:
  """`config.<key>` compiled, or None when empty.

  Raises:
    errors.UserError: the value is not a regular expression.
  """
  value = config.get(key, "")
  if not value:
    return None
  try:
    return re.compile(value)
  except re.error as e:
    raise errors.UserError(
        f"config.{key}={value!r} is not a regular expression ({e}); it is "
        f"searched in parameter paths such as 'lstm_0/w_ih'.") from None


def check_config(config: config_dict.ConfigDict) -> None:
  """The checks that need no parameters: the patterns compile, and `freeze`
  is for a single-network task (the GAN's two optimizers do not take it)."""
  for key in PATTERN_KEYS:
    compile_pattern(config, key)
  if config.get("freeze", "") and config.task == "gan":
    raise errors.UserError(
        f"config.freeze={config.freeze!r}: freezing parameters is not "
        "supported for task 'gan' (lm, pianoroll and vae take it).")
  if config.get("init_from_keys", "") and not config.get("init_from", ""):
    raise errors.UserError(
        f"config.init_from_keys={config.init_from_keys!r} needs "
        "config.init_from (the bundle to copy from).")


def _unmatched(key: str, pattern: re.Pattern, paths: list[str]) -> errors.UserError:
  shown = ", ".join(paths[:_LISTED]) + (", ..." if len(paths) > _LISTED else "")
  return errors.UserError(
      f"config.{key}={pattern.pattern!r} matches no parameter; the model's "
      f"parameters are {shown}.")


def freeze_labels(config: config_dict.ConfigDict
                  ) -> Callable[[Any], Any] | None:
  """params -> a tree of "frozen" / "trained" labels (`optax.multi_transform`),
  or None when `config.freeze` is empty.

  The labels tree has a label where the parameters have a leaf (or a
  `nn.Partitioned` box). A pattern matching no parameter raises
  `errors.UserError` when the optimizer is first initialised.
  """
  pattern = compile_pattern(config, "freeze")
  if pattern is None:
    return None

  def labels(params: Any) -> Any:
    paths = list(flatten(params))
    if not any(pattern.search(p) for p in paths):
      raise _unmatched("freeze", pattern, paths)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if pattern.search(path_string(path)) else "trained",
        params, is_leaf=_is_box)

  return labels


def check_resume(old_config_path: str, config: config_dict.ConfigDict) -> None:
  """Refuses to resume a run under a different `config.freeze`.

  The optimizer state holds moments for the trained parameters only, so the
  checkpoints of one `freeze` do not restore under another (and would be
  taken for damaged ones). `old_config_path`: the run's config.json.

  Raises:
    errors.UserError: `freeze` changed, naming both values.
  """
  if not os.path.exists(old_config_path):
    return
  with open(old_config_path, encoding="utf-8") as f:
    old = json.load(f).get("freeze", "")
  new = config.get("freeze", "")
  if old != new:
    raise errors.UserError(
        f"config.freeze={new!r}, but the checkpoints in this workdir were "
        f"trained with freeze={old!r} (their optimizer state differs): resume "
        "with the same freeze, or fine-tune into another --workdir.")


# --- the bundle --------------------------------------------------------------


def load_source(config: config_dict.ConfigDict) -> Any:
  """The bundle `config.init_from` names (`checkpoint.load_bundle`), checked
  to be of the run's task and model family.

  Raises:
    errors.MissingInputError: no bundle at that path.
    errors.UserError: the bundle is damaged, or of another task or model.
  """
  from musegen_jax import checkpoint  # pylint: disable=import-outside-toplevel
  path = config.init_from
  if not os.path.exists(path):
    raise errors.MissingInputError(
        f"--config.init_from={path}: no such bundle; write one with python -m "
        "musegen_jax.export --workdir=RUN --output=DIR.")
  try:
    bundle = checkpoint.load_bundle(path)
  except errors.UserError as e:
    # load_bundle names its --export flag; this run's flag is init_from.
    message, flag = str(e), f"--export={os.path.abspath(path)}"
    message = (f"--config.init_from={path}{message[len(flag):]}"
               if message.startswith(flag) else f"--config.init_from={path}: {message}")
    raise type(e)(message) from None
  theirs = (bundle.config.get("task"), bundle.config.get("model", {}).get("name"))
  ours = (config.task, config.model.get("name"))
  if theirs != ours:
    raise errors.UserError(
        f"--config.init_from={path} is a {theirs[0]}/{theirs[1]} bundle; this "
        f"run trains {ours[0]}/{ours[1]} (the task and the model must match).")
  return bundle


@dataclasses.dataclass
class Report:
  """What `merge` copied from the bundle and what stayed fresh (with why)."""
  copied: list[str] = dataclasses.field(default_factory=list)
  fresh: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  unused: list[str] = dataclasses.field(default_factory=list)  # In the bundle only.

  def summary(self, source: str, listed: int | None = _LISTED) -> str:
    """One line: "init_from=SOURCE: copied N parameters (...); fresh: M (...)"."""
    def names(items: list[str]) -> str:
      if listed is None or len(items) <= listed:
        return ", ".join(items)
      return ", ".join(items[:listed]) + f", ... {len(items) - listed} more"
    line = (f"init_from={source}: copied {len(self.copied)} parameters "
            f"({names(self.copied)}); fresh: {len(self.fresh)}")
    if self.fresh:
      line += f" ({names([f'{p} {why}' for p, why in self.fresh])})"
    if self.unused:
      line += f"; unused from the bundle: {len(self.unused)} ({names(self.unused)})"
    return line


def _dims(shape: tuple[int, ...]) -> str:
  return "[" + ",".join(str(d) for d in shape) + "]"


def merge(params: Any, source: Any, keys: re.Pattern | None = None
          ) -> tuple[dict[str, np.ndarray], Report]:
  """Which of `params`' leaves `source` (the bundle's tree) replaces.

  Returns:
    ({path: the bundle's value as a host array of the run's dtype}, Report).
    A path is copied when `keys` (None: every path) matches it and the
    bundle has a leaf of the same shape there.

  Raises:
    errors.UserError: `keys` matches no parameter of `params`.
  """
  ours, theirs = flatten(params), flatten(source)
  if keys is not None and not any(keys.search(p) for p in ours):
    raise _unmatched("init_from_keys", keys, list(ours))
  copies, report = {}, Report()
  for path, leaf in ours.items():
    if keys is not None and not keys.search(path):
      report.fresh.append((path, "not matched by init_from_keys"))
    elif path not in theirs:
      report.fresh.append((path, "absent from the bundle"))
    elif _shape(theirs[path]) != _shape(leaf):
      report.fresh.append((path, f"{_dims(_shape(leaf))} vs bundle "
                                 f"{_dims(_shape(theirs[path]))}"))
    else:
      dtype = (leaf.value if _is_box(leaf) else leaf).dtype
      copies[path] = np.asarray(theirs[path]).astype(dtype, copy=False)
      report.copied.append(path)
  report.unused = [p for p in theirs if p not in ours]
  return copies, report


def _replace(params: Any, copies: dict[str, np.ndarray]) -> Any:
  """`params` with the leaves at `copies`' paths replaced, each laid out as
  the leaf it replaces (its sharding; on every process of a pod)."""
  def put(path, leaf):
    value = copies.get(path_string(path))
    if value is None:
      return leaf
    return jax.make_array_from_callback(value.shape, leaf.sharding,
                                        lambda index: value[index])
  return jax.tree_util.tree_map_with_path(put, params)


def param_fields(state: Any) -> tuple[str, ...]:
  """The fields of a train state that hold the parameters a bundle exports:
  the network's and its average (single-network `TrainState`: params,
  ema_params when kept; the GAN's: g_params and ema_params, the generator:
  its critic starts fresh)."""
  main = "g_params" if hasattr(state, "g_params") else "params"
  fields = (main,)
  if getattr(state, "ema_params", None) is not None:
    fields += ("ema_params",)
  return fields


def apply(state: Any, bundle: Any, config: config_dict.ConfigDict
          ) -> tuple[Any, Report]:
  """`state` (fresh, unboxed, laid out on the mesh) with the bundle's
  parameters copied in (`merge`); the optimizer state is left as created.

  The parameter average, where the state keeps one, starts at the same
  values as the parameters.
  """
  fields = param_fields(state)
  copies, report = merge(getattr(state, fields[0]), bundle.params,
                         compile_pattern(config, "init_from_keys"))
  # Each field gets arrays of its own: the train step donates the state.
  state = state.replace(**{f: _replace(getattr(state, f), copies) for f in fields})
  logging.info("%s", report.summary(config.init_from, listed=None))
  return state, report
