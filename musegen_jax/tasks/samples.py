"""Writing samples: MIDI files with their piano-roll PNGs, WAV files with
their spectrogram PNGs, the training loop's periodic token samples, and the
spherical interpolation between two latents that latent models decode.

Every writer names its files `sample_NNN.<ext>` in sample order and puts each
picture beside its sample (`sample_NNN.png`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import jax
import note_seq
import numpy as np

from musegen_jax import plots
from musegen_jax.data import audio

Array = jax.Array


def sample_path(directory: str, index: int, extension: str) -> str:
  """`directory/sample_NNN.<extension>`."""
  return os.path.join(directory, f"sample_{index:03d}.{extension}")


def write_midi_samples(sequences: Iterable[Any], directory: str,
                       titles: Iterable[str], stem: str | None = None) -> list[str]:
  """Writes each NoteSequence as `sample_NNN.mid` and its piano roll as
  `sample_NNN.png` titled from `titles`, into `directory` (created if
  missing). With `stem`, one sequence is written as `<stem>.mid` + `.png`.

  Returns:
    The MIDI paths, in order.
  """
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i, (ns, title) in enumerate(zip(sequences, titles)):
    path = (os.path.join(directory, f"{stem}.mid") if stem
            else sample_path(directory, i, "mid"))
    note_seq.sequence_proto_to_midi_file(ns, path)
    plots.plot_pianoroll(ns, path[:-4] + ".png", title=title)
    paths.append(path)
  return paths


def write_audio_samples(clips: Iterable[np.ndarray], sample_rate: int,
                        directory: str, title: str = "") -> list[dict[str, str]]:
  """Writes each clip as `sample_NNN.wav` and its spectrogram as
  `sample_NNN.png` (titled "<title>sample N"), into `directory` (created if
  missing).

  Returns:
    One {"wav": path, "image": png path} per clip.
  """
  os.makedirs(directory, exist_ok=True)
  written = []
  for i, clip in enumerate(clips):
    path = sample_path(directory, i, "wav")
    audio.write_wav(path, clip, sample_rate)
    image = path[:-4] + ".png"
    plots.plot_spectrogram(clip, sample_rate, image, title=f"{title}sample {i}")
    written.append({"wav": path, "image": image})
  return written


def midi_step_samples(paths: Iterable[str]) -> list[dict[str, str]]:
  """The loop's record of written MIDI samples: {"midi", "image"} each."""
  return [{"midi": p, "image": os.path.splitext(p)[0] + ".png"} for p in paths]


def write_token_step_samples(task: Any, params: Any, rng: Array,
                             directory: str | None, title: str
                             ) -> list[dict[str, str]]:
  """A token task's periodic samples, as `task.config.sample` describes.

  Calls `task.write_samples` (which writes `sample_NNN.mid` + `.png` and
  returns the MIDI paths) and returns one {"midi", "image"} per sample
  (none when `directory` is None).
  """
  sample = task.config.sample
  paths = task.write_samples(
      params, rng, directory, num_samples=sample.num_samples,
      length=sample.length, temperature=sample.temperature,
      top_k=sample.top_k, top_p=sample.top_p, title=title)
  return midi_step_samples(paths)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
  """`steps` points on the great circle from `a` to `b` (ends included).

  Falls back to a straight line when the two are (anti)parallel. The first
  point is `a` and the last `b` exactly (in float32), so decoding the ends
  decodes the two latents themselves.

  Returns:
    [steps, dim] float32.
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  t = np.linspace(0.0, 1.0, steps)[:, None]
  cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  if np.sin(omega) < 1e-6:
    path = ((1 - t) * a + t * b).astype(np.float32)
  else:
    path = ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b)
            / np.sin(omega)).astype(np.float32)
  path[0] = a
  if steps > 1:
    path[-1] = b
  return path
