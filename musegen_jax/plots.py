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
