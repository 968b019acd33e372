"""Audio: a NoteSequence rendered to a mono waveform by `data/synth.py`.

The encoding is one-way: a waveform does not decode back to notes. Rendering
a whole corpus is done once and cached beside its shards
(`data/audio.ensure_audio_dir`), keyed by `cache_key`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musegen_jax.data import synth
from musegen_jax.data.representations import base


class AudioRepresentation(base.Representation):
  """Encodes NoteSequences as float32 waveforms.

  Args:
    sample_rate: samples per second of the waveform.
    **synth_settings: `synth.SynthSettings` fields (num_harmonics, attack,
      soundfont, ...); defaults for the rest.
  """

  name = "audio"

  def __init__(self, sample_rate: int = synth.DEFAULT_SAMPLE_RATE, **synth_settings: Any):
    if int(sample_rate) != sample_rate or sample_rate <= 0:
      raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}.")
    unknown = set(synth_settings) - set(synth.SynthSettings.__dataclass_fields__)
    if unknown:
      raise ValueError(f"Unknown synth settings {sorted(unknown)}; known: "
                       f"{sorted(synth.SynthSettings.__dataclass_fields__)}.")
    self.sample_rate = int(sample_rate)
    self.synth_settings = synth.SynthSettings(**synth_settings)

  @property
  def cache_key(self) -> str:
    """Short stable hash of the sample rate and synth settings."""
    return synth.settings_key(self.synth_settings, self.sample_rate)

  def settings(self) -> dict[str, Any]:
    return {"sample_rate": self.sample_rate, **self.synth_settings.to_dict()}

  def encode(self, ns: base.NoteSequence) -> np.ndarray:
    """Renders a NoteSequence.

    Args:
      ns: the sequence.

    Returns:
      [num_samples] float32 waveform in [-1, 1] at `sample_rate`.
    """
    return synth.render(ns, self.sample_rate, self.synth_settings)

  def decode(self, x: np.ndarray) -> base.NoteSequence:
    raise NotImplementedError(
        "The audio representation does not decode: a waveform cannot be turned back "
        "into notes. Write generated audio with musegen_jax.data.audio.write_wav.")
