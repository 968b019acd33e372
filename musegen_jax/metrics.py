"""Metric output: TensorBoard event files, a per-step JSON log and stdout;
optionally wandb (`config.log_to`).

Only the chief process (process 0) writes; the others get a disabled writer.
`WORKDIR/train_log.jsonl` has one line per training step (`train/<name>`
keys), which is what the resume tests compare, and one per evaluation
(`"split": "valid"`, `valid/<name>` keys).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from typing import Any, Iterable, Mapping

import numpy as np
from absl import logging

from musegen_jax import errors
from musegen_jax import workdir as workdir_lib

# The sinks `config.log_to` may name (comma-separated). The JSON log is
# always written: resume and the plots read it.
SINKS = ("tensorboard", "wandb")


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed, only so that it can
  accept torch tensors; that adds seconds to every start of a JAX run. The
  writer here only gets floats and numpy arrays, so torch is kept out of
  that import unless the program has already imported it. (Another thread
  importing torch during that import would get ImportError; the writer is
  opened once, before training starts.)
  """
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _log_lines(path: str) -> Iterable[tuple[str, dict[str, Any]]]:
  """(line, row) for each whole line of a JSON log. A line cut by a kill, or
  one a live run is still writing (no newline yet), is skipped."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.endswith("\n"):
        continue
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and isinstance(row.get("step"), int):
        yield line, row


def read_log(path: str) -> list[dict[str, Any]]:
  """The rows of a run's `train_log.jsonl` (torn lines skipped); [] if it
  does not exist."""
  return [row for _, row in _log_lines(path)] if os.path.exists(path) else []


def _truncate_log(path: str, last_step: int) -> None:
  """Keeps the lines of `path` up to `last_step` (and drops a torn last line)."""
  if not os.path.exists(path):
    return
  kept = [line for line, row in _log_lines(path) if row["step"] <= last_step]
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def parse_log_to(log_to: str) -> tuple[str, ...]:
  """`config.log_to` ("tensorboard", "tensorboard,wandb", "") as sink names.

  Raises:
    errors.UserError: an unknown sink, or wandb asked for without the
      package installed.
  """
  names = tuple(dict.fromkeys(n.strip() for n in log_to.split(",") if n.strip()))
  unknown = [n for n in names if n not in SINKS]
  if unknown:
    raise errors.UserError(f"config.log_to={log_to!r}: unknown sink "
                           f"{unknown[0]!r}; allowed: comma-separated "
                           f"{', '.join(SINKS)} (or empty: the JSON log only).")
  if "wandb" in names:
    try:
      import wandb  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise errors.UserError(
          f"config.log_to={log_to!r}: wandb is not installed; pip install "
          "-e '.[wandb]' (or pip install wandb), or drop wandb from "
          "config.log_to.") from None
  return names


class _TensorBoard:
  """TensorBoard event files in WORKDIR/tensorboard (tensorboardX)."""

  def __init__(self, layout: workdir_lib.Layout, resume_step: int):
    SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
    # purge_step: curves past the restored step are dropped, not doubled.
    self._tb = SummaryWriter(layout.tensorboard, purge_step=resume_step or None)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    for tag, v in values.items():
      self._tb.add_scalar(tag, v, step)
    self._tb.flush()

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    self._tb.add_image(tag, image, step, dataformats="HWC")

  def audio(self, step: int, tag: str, samples: np.ndarray, rate: int) -> None:
    self._tb.add_audio(tag, samples, step, sample_rate=rate)

  def close(self) -> None:
    self._tb.close()


def wandb_mode() -> str:
  """wandb's mode: WANDB_MODE where the user set it, "online" where they
  gave an API key (WANDB_API_KEY), else "offline" (a run folder under
  WORKDIR/wandb that `wandb sync` uploads later)."""
  if os.environ.get("WANDB_MODE"):
    return os.environ["WANDB_MODE"]
  return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class _Wandb:
  """One wandb run per workdir: its id is kept in the workdir, so a resumed
  run logs into the same wandb run. Steps are logged as the `step` metric
  (the x-axis of every chart), so steps a resumed run repeats are plotted
  again rather than refused."""

  def __init__(self, layout: workdir_lib.Layout, run_config: Mapping[str, Any]):
    import wandb  # pylint: disable=import-outside-toplevel
    self._wandb = wandb
    if os.path.exists(layout.wandb_run_id):
      with open(layout.wandb_run_id, encoding="utf-8") as f:
        run_id = f.read().strip()
    else:
      run_id = secrets.token_hex(6)  # wandb ids: lowercase alphanumerics.
      with open(layout.wandb_run_id, "w", encoding="utf-8") as f:
        f.write(run_id + "\n")
    os.makedirs(layout.wandb, exist_ok=True)
    self._run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "musegen_jax"),
        name=os.path.basename(os.path.normpath(layout.root)),
        id=run_id, resume="allow", dir=layout.root, mode=wandb_mode(),
        config=dict(run_config),
        # No stdout capture (the progress bar owns the terminal), no system
        # sampling thread competing with the input pipeline.
        settings=wandb.Settings(console="off", x_disable_stats=True,
                                silent=True, save_code=False))
    self._run.define_metric("step")
    self._run.define_metric("*", step_metric="step")

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._run.log({"step": step, **values})

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    self._run.log({"step": step, tag: self._wandb.Image(image)})

  def audio(self, step: int, tag: str, samples: np.ndarray, rate: int) -> None:
    self._run.log({"step": step, tag: self._wandb.Audio(samples, sample_rate=rate)})

  def close(self) -> None:
    self._run.finish()


class MetricWriter:
  """Writes scalars to the JSON log, stdout and the sinks of `log_to`."""

  def __init__(self, workdir: str, *, enabled: bool = True,
               resume_step: int = 0, log_to: str = "tensorboard",
               run_config: Mapping[str, Any] | None = None):
    """Opens the writers.

    Args:
      workdir: the run's directory.
      enabled: False on non-chief processes: nothing is written.
      resume_step: the step the run restarts from. Anything logged after it
        by a run that died before its next checkpoint is dropped, so the log
        holds each step once and TensorBoard shows no doubled curves.
      log_to: `config.log_to` (see `parse_log_to`).
      run_config: the config as a dict, recorded by wandb.
    """
    self.enabled = enabled
    self._sinks = []
    self._log = None
    names = parse_log_to(log_to)
    if enabled:
      layout = workdir_lib.Layout(workdir)
      log_path = layout.train_log
      os.makedirs(os.path.dirname(log_path), exist_ok=True)
      _truncate_log(log_path, resume_step)
      self._log = open(log_path, "a", encoding="utf-8")
      if "tensorboard" in names:
        self._sinks.append(_TensorBoard(layout, resume_step))
      if "wandb" in names:
        self._sinks.append(_Wandb(layout, run_config or {}))

  def write_steps(self, prefix: str, rows: Iterable[tuple[int, Mapping[str, Any]]]
                  ) -> None:
    """Appends one JSON line per step: {"step": s, "<prefix>/<name>": v}."""
    if not self.enabled:
      return
    lines = []
    for step, values in rows:
      line = {"step": int(step)}
      line.update({f"{prefix}/{k}": float(v) for k, v in values.items()})
      lines.append(json.dumps(line) + "\n")
    self._log.write("".join(lines))  # One write: readers see whole lines sooner.
    self._log.flush()

  def write_eval(self, step: int, values: Mapping[str, Any], *,
                 split: str) -> None:
    """An evaluation: scalars `<split>/<name>`, and one log line
    {"step": s, "split": split, "<split>/<name>": v}."""
    if not self.enabled:
      return
    line = {"step": int(step), "split": split}
    line.update({f"{split}/{k}": float(v) for k, v in values.items()})
    self._log.write(json.dumps(line) + "\n")
    self._log.flush()
    self.write_scalars(step, values, prefix=split)

  def write_scalars(self, step: int, values: Mapping[str, Any], *,
                    prefix: str) -> None:
    if not self.enabled:
      return
    tagged = {f"{prefix}/{k}": float(v) for k, v in values.items()}
    for sink in self._sinks:
      sink.scalars(step, tagged)
    logging.info("step %d %s: %s", step, prefix, ", ".join(
        f"{k}={float(v):.5g}" for k, v in values.items()))

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """Adds an [height, width, 3] uint8 image."""
    if self.enabled:
      for sink in self._sinks:
        sink.image(step, tag, image)

  def write_audio(self, step: int, tag: str, wav_path: str) -> None:
    """Adds a WAV file (read back at its own sample rate) as audio."""
    if self.enabled and self._sinks:
      import soundfile  # pylint: disable=import-outside-toplevel
      samples, rate = soundfile.read(wav_path, dtype="float32", always_2d=True)
      for sink in self._sinks:
        sink.audio(step, tag, samples[:, 0], rate)

  def close(self) -> None:
    if self.enabled:
      for sink in self._sinks:
        sink.close()
      self._log.close()
