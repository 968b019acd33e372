"""The training progress bar: finished steps, their rate, losses, and an ETA.

The loop tells `Progress` when a step has *finished* on the devices (not when
it was dispatched), so the count, steps/s and the ETA are what the hardware
did. Once the first steps after compilation are timed, a run that would take
more than a day at that rate says so once, with a quicker variant, and goes on.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import tqdm

# The estimate is made once this long has been timed, or this many steps.
_TIMED_SECONDS = 10.0
_TIMED_STEPS = 20
LONG_RUN_SECONDS = 24 * 3600.0


def format_duration(seconds: float) -> str:
  """4 s, 12 min, 3.5 h, 54 days."""
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{seconds / 60:.0f} min"
  if seconds < 2 * 86400:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.0f} days"


def long_run_message(seconds_per_step: float, remaining_steps: int,
                     device: str, config_file: str | None) -> str | None:
  """The one-time warning for a run longer than a day at this rate, or None."""
  eta = seconds_per_step * remaining_steps
  if eta <= LONG_RUN_SECONDS:
    return None
  rate = (f"{seconds_per_step:.3g} s/step" if seconds_per_step >= 1
          else f"{1 / seconds_per_step:.3g} steps/s")
  if config_file and not config_file.endswith(":smoke"):
    quicker = (f"--config={config_file.partition(':')[0]}:smoke trains a small "
               "model in about a minute on a CPU; ")
  elif config_file:
    quicker = ""
  else:
    quicker = ("every config in configs/ has a :smoke variant that trains in "
               "about a minute on a CPU; ")
  return (f"note: at {rate} on {device}, the remaining {remaining_steps:,} "
          f"steps take about {format_duration(eta)}. This config is made for "
          f"GPUs or TPUs: {quicker}--config.num_train_steps=N shortens the "
          "run. Training goes on.")


class Progress:
  """A tqdm bar over finished steps, and the one-time long-run estimate."""

  def __init__(self, *, total: int, initial: int, enabled: bool, device: str,
               config_file: str | None = None):
    self._bar = tqdm.tqdm(total=total, initial=initial, disable=not enabled,
                          unit="step", dynamic_ncols=True)
    self._enabled = enabled
    self._device = device
    self._config_file = config_file
    self.finished_step = initial
    self._total = total
    # Timed from the first finished step on, so compilation is left out.
    self._first: tuple[int, float] | None = None
    self._estimated = False

  def finished(self, step: int) -> None:
    """Steps up to `step` have finished on the devices."""
    if step <= self.finished_step:
      return
    now = time.perf_counter()
    self._bar.update(step - self.finished_step)
    self.finished_step = step
    if self._first is None:
      self._first = (step, now)
      return
    first_step, first_time = self._first
    timed_steps, timed = step - first_step, now - first_time
    if not self._estimated and (timed >= _TIMED_SECONDS or timed_steps >= _TIMED_STEPS):
      self._estimated = True
      message = long_run_message(timed / timed_steps, self._total - step,
                                 self._device, self._config_file)
      if message and self._enabled:
        self.write(message)

  def show(self, values: Mapping[str, Any]) -> None:
    """The task's losses beside the bar."""
    self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in values.items()},
                          refresh=False)

  def write(self, text: str) -> None:
    """A line above the bar (chief only)."""
    if self._enabled:
      self._bar.write(text)

  def close(self) -> None:
    self._bar.close()
