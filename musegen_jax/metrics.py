"""Metric output: TensorBoard event files, a per-step JSON log and stdout.

Only the chief process (process 0) writes; the others get a disabled writer.
`WORKDIR/train_log.jsonl` has one line per training step (`train/<name>`
keys), which is what the resume tests compare, and one per evaluation
(`"split": "valid"`, `valid/<name>` keys).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable, Mapping

import numpy as np
from absl import logging

from musegen_jax import workdir as workdir_lib


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


def _truncate_log(path: str, last_step: int) -> None:
  """Keeps the lines of `path` up to `last_step` (and drops a torn last line)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # A line cut by a kill.
        continue
      if row["step"] <= last_step:
        kept.append(line if line.endswith("\n") else line + "\n")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


class MetricWriter:
  """Writes scalars to TensorBoard (`WORKDIR/tensorboard`) and the log."""

  def __init__(self, workdir: str, *, enabled: bool = True,
               resume_step: int = 0):
    """Opens the writers.

    Args:
      workdir: the run's directory.
      enabled: False on non-chief processes: nothing is written.
      resume_step: the step the run restarts from. Anything logged after it
        by a run that died before its next checkpoint is dropped, so the log
        holds each step once and TensorBoard shows no doubled curves.
    """
    self.enabled = enabled
    self._tb = None
    self._log = None
    if enabled:
      SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
      layout = workdir_lib.Layout(workdir)
      log_path = layout.train_log
      _truncate_log(log_path, resume_step)
      self._tb = SummaryWriter(layout.tensorboard,
                               purge_step=resume_step or None)
      self._log = open(log_path, "a", encoding="utf-8")

  def write_steps(self, prefix: str, rows: Iterable[tuple[int, Mapping[str, Any]]]
                  ) -> None:
    """Appends one JSON line per step: {"step": s, "<prefix>/<name>": v}."""
    if not self.enabled:
      return
    for step, values in rows:
      line = {"step": int(step)}
      line.update({f"{prefix}/{k}": float(v) for k, v in values.items()})
      self._log.write(json.dumps(line) + "\n")
    self._log.flush()

  def write_eval(self, step: int, values: Mapping[str, Any], *,
                 split: str) -> None:
    """An evaluation: TensorBoard scalars `<split>/<name>`, and one log line
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
    for k, v in values.items():
      self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
    self._tb.flush()
    logging.info("step %d %s: %s", step, prefix, ", ".join(
        f"{k}={float(v):.5g}" for k, v in values.items()))

  def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
    """Adds an [height, width, 3] uint8 image."""
    if self.enabled:
      self._tb.add_image(tag, image, step, dataformats="HWC")

  def write_audio(self, step: int, tag: str, wav_path: str) -> None:
    """Adds a WAV file (read back at its own sample rate) as TensorBoard audio."""
    if self.enabled:
      import soundfile  # pylint: disable=import-outside-toplevel
      samples, rate = soundfile.read(wav_path, dtype="float32", always_2d=True)
      self._tb.add_audio(tag, samples[:, 0], step, sample_rate=rate)

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._log.close()
