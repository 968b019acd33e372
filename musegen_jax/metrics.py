"""Metric output: TensorBoard event files, a per-step JSON log and stdout.

Only the chief process (process 0) writes; the others get a disabled writer.
`WORKDIR/train_log.jsonl` has one line per training step, which is what the
resume tests compare.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import numpy as np
from absl import logging


class MetricWriter:
  """Writes scalars to TensorBoard (`WORKDIR/tensorboard`) and the log."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._log = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._log = open(os.path.join(workdir, "train_log.jsonl"), "a",
                       encoding="utf-8")

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

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._log.close()
