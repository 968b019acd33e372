"""Pictures of outputs: piano-roll PNGs of NoteSequences, spectrograms of audio."""

from __future__ import annotations

import numpy as np


def plot_pianoroll(ns, path: str, *, title: str = "") -> None:
  """Draws every note of `ns` as a bar (time in seconds vs. MIDI pitch)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
  notes = list(ns.notes)
  if notes:
    starts = np.array([n.start_time for n in notes])
    durations = np.array([n.end_time - n.start_time for n in notes])
    pitches = np.array([n.pitch for n in notes])
    velocities = np.array([n.velocity for n in notes]) / 127.0
    ax.barh(pitches, durations, left=starts, height=0.8,
            color=matplotlib.colormaps["viridis"](velocities))
    ax.set_ylim(pitches.min() - 2, pitches.max() + 2)
    ax.set_xlim(0, max(ns.total_time, (starts + durations).max()))
  ax.set_xlabel("time (s)")
  ax.set_ylabel("MIDI pitch")
  ax.set_title(title or f"{len(notes)} notes")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_spectrogram(audio: np.ndarray, sample_rate: int, path: str, *,
                     title: str = "") -> None:
  """Draws the log-mel spectrogram of mono `audio` ([length] floats)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from musegen_jax import spectral

  hop, n_fft = 128, 512
  audio = np.asarray(audio, np.float32).reshape(-1)
  if len(audio) < n_fft:
    audio = np.pad(audio, (0, n_fft - len(audio)))
  mel = np.asarray(spectral.log_mel(audio[None], sample_rate, n_fft=n_fft,
                                    hop=hop, n_mels=80))[0]
  fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
  ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
            extent=(0, len(audio) / sample_rate, 0, mel.shape[1]))
  ax.set_xlabel("time (s)")
  ax.set_ylabel("mel bin")
  ax.set_title(title or "log-mel spectrogram")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def read_eval_rows(workdir: str, split: str = "valid") -> list[dict]:
  """The eval rows of WORKDIR/train_log.jsonl, keys without their prefix."""
  import os

  from musegen_jax import metrics
  from musegen_jax import workdir as workdir_lib

  path = workdir_lib.Layout(workdir).train_log
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no train_log.jsonl (is {workdir} a workdir?)")
  return [{k.split("/", 1)[-1]: v for k, v in row.items()}
          for row in metrics.read_log(path) if row.get("split") == split]


def plot_learning_curve(rows: list[dict], keys: list[str], path: str, *,
                        title: str = "") -> None:
  """Each of `keys` against step (left) and wall time (right, from the
  rows' `launch_seconds`), one row of panels per key, log scale."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  missing = [k for k in keys if not rows or k not in rows[0]]
  if missing:
    raise ValueError(f"No eval rows with {missing}; "
                     f"the rows have {sorted(rows[0]) if rows else 'none'}")
  fig, axes = plt.subplots(len(keys), 2, figsize=(10, 2.6 * len(keys)), dpi=100,
                           squeeze=False)
  steps = [r["step"] for r in rows]
  minutes = [r.get("launch_seconds", float("nan")) / 60 for r in rows]
  for (left, right), key in zip(axes, keys):
    values = [r[key] for r in rows]
    for ax, x, label in ((left, steps, "step"), (right, minutes, "minutes")):
      ax.plot(x, values, marker="o")
      ax.set_xlabel(label)
      ax.set_ylabel(key)
      if min(values) > 0:
        ax.set_yscale("log")
      ax.grid(True, alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
