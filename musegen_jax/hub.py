"""Export bundles in the Hugging Face Hub folder layout: safetensors and a model card.

A bundle written with `--format=safetensors` (or `both`) holds

    model.safetensors    the parameters, one tensor per Flax parameter path
                         ("lstm_0.w_ih"; a GAN's "params.<...>" and
                         "batch_stats.<...>"), numpy dtypes kept
    config.json          the training config
    representation.json  the data representation's settings
    README.md            the model card: YAML front matter, then task, model,
                         data, training, the run's evaluations, how it was
                         made and how to sample
    bundle.json          format version, formats present, sha256 of each file

so the parameters read without this project:

    from safetensors.numpy import load_file
    params = load_file("model.safetensors")  # {"lstm_0.w_ih": array, ...}

The flat keys go back into the nested tree the config's model defines
(`expected_params`): its abstract parameters give every key, shape and the
tree's structure, so a tensor that is missing, extra or of another shape
fails with one line naming it (`check_params_match`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from musegen_jax import errors
from musegen_jax import metrics

SAFETENSORS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"
# The most evaluation rows the model card lists (the newest).
MAX_CARD_EVALUATIONS = 20


# --- parameter paths ----------------------------------------------------------

def _key_name(entry: Any) -> str:
  """One path component of a pytree key path, as text."""
  if isinstance(entry, jax.tree_util.DictKey):
    return str(entry.key)
  if isinstance(entry, jax.tree_util.SequenceKey):
    return str(entry.idx)
  if isinstance(entry, jax.tree_util.GetAttrKey):
    return entry.name
  if isinstance(entry, jax.tree_util.FlattenedIndexKey):
    return str(entry.key)
  return str(entry)


def param_key(path: Sequence[Any]) -> str:
  """A leaf's key path as one name, its components joined with ".":
  `lstm_0.w_ih`, or a GAN generator's `params.z_project.kernel`."""
  return ".".join(_key_name(entry) for entry in path)


def flat_items(tree: Any) -> list[tuple[str, Any]]:
  """[(parameter path, leaf)] of `tree` in its flattening order.

  Raises:
    ValueError: two leaves get the same name (a component holding ".").
  """
  items = [(param_key(path), leaf)
           for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
  seen = set()
  for key, _ in items:
    if key in seen:
      raise ValueError(f"Two parameters are both named {key!r} once their path "
                       "components are joined with '.'.")
    seen.add(key)
  return items


def flatten_params(params: Any) -> dict[str, np.ndarray]:
  """{parameter path: numpy array} of a parameter tree, dtypes kept (arrays
  on devices are fetched to the host)."""
  return {key: np.asarray(jax.device_get(leaf)) for key, leaf in flat_items(params)}


def check_params_match(expected: Any, params: Any, *, source: str = "") -> None:
  """Raises errors.UserError unless `params` has `expected`'s keys and shapes.

  Args:
    expected: the parameter tree a model needs, of arrays or
      `jax.ShapeDtypeStruct`s (e.g. `expected_params(config, spec)`).
    params: a nested parameter tree, or a flat {parameter path: array} dict
      (as `safetensors.numpy.load_file` returns).
    source: what the parameters came from, to start the message (a path).

  The one-line message names the first parameter (in `expected`'s order)
  that is missing or has another shape, with both shapes, else the first
  extra one. Dtypes are not compared: a bundle keeps the dtypes it was
  saved with.
  """
  want = {key: tuple(leaf.shape) for key, leaf in flat_items(expected)}
  if isinstance(params, Mapping) and all(
      isinstance(k, str) and not isinstance(v, Mapping) for k, v in params.items()):
    got = {key: tuple(np.shape(leaf)) for key, leaf in params.items()}
  else:
    got = {key: tuple(np.shape(leaf)) for key, leaf in flat_items(params)}
  prefix = f"{source}: " if source else ""
  for key, shape in want.items():
    if key not in got:
      raise errors.UserError(
          f"{prefix}parameter {key!r} (shape {shape}) is missing; the config's "
          "model needs it.")
    if got[key] != shape:
      raise errors.UserError(
          f"{prefix}parameter {key!r} has shape {got[key]}, the config's model "
          f"needs {shape}.")
  extra = [key for key in got if key not in want]
  if extra:
    raise errors.UserError(
        f"{prefix}parameter {extra[0]!r} (shape {got[extra[0]]}) is not one of "
        f"the config's model ({len(extra)} extra in all).")


def unflatten_params(expected: Any, tensors: Mapping[str, Any], *,
                     source: str = "") -> Any:
  """The flat {parameter path: array} `tensors` as `expected`'s nested tree.

  Checked first with `check_params_match` (same arguments).
  """
  check_params_match(expected, tensors, source=source)
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(expected),
      [tensors[key] for key, _ in flat_items(expected)])


def expected_params(config: ml_collections.ConfigDict,
                    representation: Mapping[str, Any]) -> Any:
  """The parameter tree an export of `config` holds (the task's
  `eval_params`: the EMA generator's variables for a GAN), as
  `jax.ShapeDtypeStruct`s; nothing is computed."""
  from musegen_jax import tasks  # pylint: disable=import-outside-toplevel
  from musegen_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from musegen_jax.tasks import state as state_lib  # pylint: disable=import-outside-toplevel

  # A copy: the task fills in defaults of keys older configs lack.
  task = tasks.create_task(config.copy_and_resolve_references(),
                           pipeline.representation_from_spec(dict(representation)))
  abstract_state = jax.eval_shape(
      lambda rng: state_lib.unbox(task.init_state(rng)), jax.random.PRNGKey(0))
  return task.eval_params(abstract_state)


# --- model.safetensors --------------------------------------------------------

def write_safetensors(path: str, params: Any, metadata: Mapping[str, Any]) -> None:
  """Writes `params` flattened (`flatten_params`) with `metadata` (values
  as strings) in the file's header."""
  from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel

  tensors = {key: np.ascontiguousarray(value)
             for key, value in flatten_params(params).items()}
  st_numpy.save_file(tensors, path,
                     metadata={str(k): str(v) for k, v in metadata.items()})


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """({parameter path: numpy array}, header metadata) of a safetensors file.

  Raises:
    errors.UserError: the file does not parse as safetensors.
  """
  import safetensors  # pylint: disable=import-outside-toplevel

  try:
    with safetensors.safe_open(path, framework="np") as f:
      metadata = dict(f.metadata() or {})
      tensors = {key: f.get_tensor(key) for key in f.keys()}
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise errors.UserError(f"{path} is not a readable safetensors file "
                           f"({type(e).__name__}: {e}).") from None
  return tensors, metadata


# --- the model card -------------------------------------------------------------

def read_evaluations(train_log: str, up_to_step: int | None = None
                     ) -> list[dict[str, Any]]:
  """The valid rows of a run's train_log.jsonl (`workdir.Layout.train_log`),
  the last one of each step, in step order, none after `up_to_step`.

  A missing log gives []; unreadable lines (a run killed mid-write) are
  skipped.
  """
  by_step = {row["step"]: row for row in metrics.read_log(train_log)
             if row.get("split") == "valid"
             and (up_to_step is None or row["step"] <= up_to_step)}
  return [by_step[s] for s in sorted(by_step)]


def _number(value: Any) -> str:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return str(value)
  return f"{value:.4g}" if math.isfinite(value) else str(value)


def _evaluation_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Markdown table lines of the valid rows: step, then each figure."""
  columns: list[str] = []
  for row in rows:
    for key in row:
      if (key.startswith("valid/") and not key.endswith("_seconds")
          and key not in columns):
        columns.append(key)
  names = [c[len("valid/"):] for c in columns]
  lines = ["| step | " + " | ".join(names) + " |",
           "|" + "---:|" * (len(columns) + 1)]
  for row in rows:
    cells = [_number(row["step"])] + [_number(row[c]) if c in row else ""
                                      for c in columns]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


# Config keys of how data is read, not what the model saw: left off the card.
_LOADER_KEYS = ("bad_records", "num_workers", "prefetch_buffer_size",
                "representation", "dir")


def _settings(node: Mapping[str, Any], indent: str = "",
              skip: Iterable[str] = ()) -> list[str]:
  """'- key: `value`' lines of a section's plain values (nested sections,
  `skip` and values of over 80 characters, e.g. a tokenizer's whole
  vocabulary, left out)."""
  lines = []
  for key, value in sorted(node.items()):
    text = json.dumps(value)
    if not isinstance(value, Mapping) and key not in skip and len(text) <= 80:
      lines.append(f"{indent}- {key}: `{text}`")
  return lines


def model_card(config: ml_collections.ConfigDict,
               representation: Mapping[str, Any], *, step: int, params: Any,
               formats: Iterable[str], evaluations: Sequence[Mapping[str, Any]] = (),
               checkpoint_metrics: Mapping[str, Any] | None = None,
               export_command: str | None = None,
               train_commands: Sequence[str] = ()) -> str:
  """The README.md of a bundle: Hub YAML front matter, then what the model
  is, what it was trained on and for how long, the evaluations the run
  recorded (`read_evaluations`), how the bundle was made and how to sample.

  Args:
    config: the training config.
    representation: {"name": ..., "settings": {...}} of the data encoding.
    step: the training step of the parameters.
    params: the exported parameter tree (its size is reported).
    formats: the parameter formats in the bundle ("orbax", "safetensors").
    evaluations: the run's valid rows (train_log.jsonl), oldest first.
    checkpoint_metrics: the exported checkpoint's own metrics (orbax's).
    export_command: the command that wrote the bundle, when known.
    train_commands: the commands that launched the run (WORKDIR/commands.txt:
      the first, then each resume), when recorded.
  """
  task, model = config.task, config.model.name
  rep_name = representation.get("name", "")
  formats = list(formats)
  leaves = jax.tree_util.tree_leaves(params)
  num_params = sum(int(np.prod(np.shape(x))) for x in leaves)
  tags = ["musegen_jax", "jax", "flax", "music-generation", task, model, rep_name]
  tags = list(dict.fromkeys(t for t in tags if t))
  lines = ["---", "library_name: musegen_jax", "tags:"]
  lines += [f"- {json.dumps(t)}" for t in tags]
  lines += ["---", "", f"# {model} ({task}), step {step}", "",
            f"A musegen_jax `{task}` model: `{model}`, trained for {step} of "
            f"{config.get('num_train_steps', step)} steps "
            f"({num_params:,} parameters in the export).", ""]

  lines += ["## Model", "", f"- task: `{task}`", f"- parameters: {num_params:,} "
            f"in {len(leaves)} tensors"]
  lines += _settings(config.model.to_dict(), skip=("name",))
  lines += ["", "## Data", ""]
  if "data" in config:
    source = config.data.get("dir") or "the bundled JSB Chorales (default dataset)"
    lines.append(f"- data: {source}")
  lines.append(f"- representation: `{rep_name}`")
  lines += _settings(representation.get("settings", {}), indent="  ")
  if "data" in config:
    lines += _settings(config.data.to_dict(), skip=_LOADER_KEYS)

  lines += ["", "## Training", "", f"- steps: {step} (of "
            f"{config.get('num_train_steps', step)} configured)"]
  for key in ("batch_size", "learning_rate", "warmup_steps", "weight_decay",
              "ema_decay", "seed", "parallelism"):
    if key in config:
      lines.append(f"- {key}: `{json.dumps(config[key])}`")

  lines += ["", "## Evaluation", ""]
  finite = {k: v for k, v in (checkpoint_metrics or {}).items()
            if isinstance(v, (int, float)) and math.isfinite(v)}
  if finite:
    lines.append("The exported checkpoint's own figures (what "
                 "`--checkpoint=best` ranks by): " + ", ".join(
                     f"{k} {_number(v)}" for k, v in sorted(finite.items())) + ".")
    lines.append("")
  if evaluations:
    shown = list(evaluations)[-MAX_CARD_EVALUATIONS:]
    lines.append(f"The run's evaluations on the valid split up to step {step} "
                 f"(train_log.jsonl; the last {len(shown)} of "
                 f"{len(evaluations)}):")
    lines.append("")
    lines += _evaluation_table(shown)
  elif not finite:
    lines.append("The run recorded no evaluation up to this step.")

  lines += ["", "## How it was made", ""]
  if train_commands:
    lines += ["Trained with" + (" (the first launch, then each resume)"
                                if len(train_commands) > 1 else ""),
              "", "```", *train_commands, "```", ""]
  if export_command:
    lines += ["Exported with", "", "```", export_command, "```", ""]
  lines += ["The training config is `config.json` (train again with "
            "`python -m musegen_jax.main --config=CONFIG.py --workdir=RUN`, "
            "CONFIG.py setting these values); the data representation's "
            "settings are `representation.json`.", "",
            "<details><summary>Training config</summary>", "", "```json",
            json.dumps(config.to_dict(), indent=2, sort_keys=True), "```", "",
            "</details>", ""]

  lines += ["## Use", "", "With musegen_jax installed (THIS_FOLDER: the one this "
            "card lies in):", "",
            "```",
            "python -m musegen_jax.sample --export=THIS_FOLDER "
            "--output_dir=samples --num_samples=4 --seed=0",
            "python -m musegen_jax.evaluate --export=THIS_FOLDER --split=valid",
            "```", ""]
  if "safetensors" in formats:
    lines += ["The parameters alone, without musegen_jax:", "", "```python",
              "from safetensors.numpy import load_file",
              f"params = load_file(\"{SAFETENSORS_FILE}\")  # "
              "{\"<module>.<name>\": numpy array}: the Flax parameter "
              "paths joined with \".\"",
              "```", ""]
  lines.append(f"Files: {', '.join(_format_files(formats))}, config.json, "
               "representation.json, bundle.json (format version and the "
               "sha256 of every file, checked on load).")
  return "\n".join(lines) + "\n"


def _format_files(formats: Iterable[str]) -> list[str]:
  names = {"orbax": "params/ (orbax arrays)",
           "safetensors": f"{SAFETENSORS_FILE} (safetensors)"}
  return [names[f] for f in formats]
