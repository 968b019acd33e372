"""NoteSequence -> audio: a fast additive synthesizer, or FluidSynth with a SoundFont.

The additive synthesizer needs nothing beyond numpy. Each note is a sum of
`num_harmonics` sine harmonics whose amplitudes fall by `harmonic_decay` per
harmonic (those above Nyquist are left out), shaped by an envelope: a linear
attack to full level, an exponential decay towards `sustain`, and a linear
release after the note ends. A note's peak is `gain * velocity / 127`; notes
are added together and the mix is scaled down only if it would exceed 1, so
loudness is the same from piece to piece. Rendering is deterministic: the same
sequence and settings give the same samples on every machine.

Speed comes from a per-call cache: a chorale strikes the same (pitch,
velocity, length) many times, and each such note is synthesized once.

With `soundfont` set, `note_seq.midi_synth.fluidsynth` renders instead (it
needs pyfluidsynth and the FluidSynth library).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
from typing import Any

import numpy as np
from note_seq.protobuf import music_pb2

NoteSequence = music_pb2.NoteSequence

DEFAULT_SAMPLE_RATE = 16000
# Part of every cache key: bump it when the additive synthesis changes, so
# that audio rendered by older code is not reused.
SYNTH_VERSION = 1
_BLOCK = 4096  # Samples per block of a cached tone or envelope.
# Harmonic tones by (sample rate, num_harmonics, harmonic_decay, pitch), kept
# across render calls of this process; cleared when they exceed the limit
# (8M float64 samples: 64 MB).
_TONES: dict[tuple[int, int, float, int], np.ndarray] = {}
_MAX_CACHED_TONE_SAMPLES = 1 << 23


@dataclasses.dataclass(frozen=True)
class SynthSettings:
  """How NoteSequences are rendered to audio.

  Attributes:
    num_harmonics: sine partials per note, the fundamental included.
    harmonic_decay: amplitude ratio of harmonic k + 1 to harmonic k, in (0, 1].
    attack: seconds from silence to full level.
    decay: time constant, in seconds, of the fall from full level to sustain.
    sustain: level held while the note lasts, relative to full level, in [0, 1].
    release: seconds from the note's end to silence (added after the note).
    gain: peak amplitude of one note at velocity 127.
    soundfont: path of a .sf2 file; if set, FluidSynth renders and the
      settings above other than `program` are unused.
    program: General MIDI program (0-127) every non-drum note is played with
      by FluidSynth; -1 keeps each note's own program.
  """
  num_harmonics: int = 6
  harmonic_decay: float = 0.6
  attack: float = 0.01
  decay: float = 0.4
  sustain: float = 0.5
  release: float = 0.1
  gain: float = 0.2
  soundfont: str = ""
  program: int = -1

  def __post_init__(self):
    # Canonical types, so that equal settings hash to the same cache key
    # (JSON writes gain=1 and gain=1.0 differently).
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.type in ("int", "float"):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
            or field.type == "int" and int(value) != value):
          raise ValueError(f"Bad synth setting {field.name}={value!r}: expected {field.type}")
        object.__setattr__(self, field.name, int(value) if field.type == "int" else float(value))
    checks = {
        "num_harmonics": self.num_harmonics >= 1,
        "harmonic_decay": 0 < self.harmonic_decay <= 1,
        "attack": self.attack >= 0,
        "decay": self.decay > 0,
        "sustain": 0 <= self.sustain <= 1,
        "release": self.release >= 0,
        "gain": 0 < self.gain <= 1,
        "program": -1 <= self.program <= 127,
    }
    for name, ok in checks.items():
      if not ok:
        raise ValueError(f"Bad synth setting {name}={getattr(self, name)!r}")
    if not isinstance(self.soundfont, str):
      raise ValueError(f"soundfont must be a path string, got {self.soundfont!r}")

  def to_dict(self) -> dict[str, Any]:
    """The JSON-able fields; `SynthSettings(**d)` rebuilds an equal object."""
    return dataclasses.asdict(self)


def settings_key(settings: SynthSettings, sample_rate: int | None = None) -> str:
  """A short hash of the settings (and sample rate), stable across runs and machines.

  Used to name caches of rendered audio: different settings, different key.
  """
  payload = {"synth_version": SYNTH_VERSION, **settings.to_dict()}
  if sample_rate is not None:
    payload["sample_rate"] = int(sample_rate)
  text = json.dumps(payload, sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def midi_to_hz(pitch: float) -> float:
  """Equal-tempered frequency of a MIDI pitch (A4 = 69 = 440 Hz)."""
  return 440.0 * 2.0 ** ((pitch - 69) / 12.0)


class _NoteCache:
  """Note waveforms of one render call, keyed by (pitch, velocity, samples).

  A pitch's tone and the held part of the envelope do not depend on a note's
  length, so each is computed once and notes cut their prefix. Tones are also
  kept across calls (`_TONES`); they are computed in fixed blocks of samples,
  so a sample's value never depends on what was rendered before.
  """

  def __init__(self, settings: SynthSettings, sample_rate: int):
    self.settings = settings
    self.sample_rate = sample_rate
    self.release_samples = int(round(settings.release * sample_rate))
    self._release_ramp = 1.0 - np.arange(1, self.release_samples + 1) / max(
        1, self.release_samples)
    self._held = np.zeros(0)
    self._notes: dict[tuple[int, int, int], np.ndarray] = {}

  def _grow(self, curve: np.ndarray, length: int, block_fn) -> np.ndarray:
    blocks = [curve]
    end = len(curve)
    while end < length:
      blocks.append(block_fn(np.arange(end, end + _BLOCK, dtype=np.float64)))
      end += _BLOCK
    return np.concatenate(blocks) if len(blocks) > 1 else curve

  def _tone_block(self, f0: float, index: np.ndarray) -> np.ndarray:
    s, sr = self.settings, self.sample_rate
    x = (2 * np.pi * f0 / sr) * index
    sin1, cos2 = np.sin(x), 2 * np.cos(x)
    # sin((k + 1) x) = 2 cos(x) sin(k x) - sin((k - 1) x): one sin and one cos
    # for all harmonics.
    prev, cur = np.zeros_like(x), sin1
    tone = np.zeros_like(x)
    total = 0.0
    for k in range(1, s.num_harmonics + 1):
      if k * f0 >= sr / 2:
        break
      amplitude = s.harmonic_decay ** (k - 1)
      tone += amplitude * cur
      total += amplitude
      prev, cur = cur, cos2 * cur - prev
    return tone / total if total else tone  # Peak <= 1 whatever the phases.

  def _held_block(self, index: np.ndarray) -> np.ndarray:
    s = self.settings
    t = index / self.sample_rate
    attack = np.minimum(1.0, t / s.attack) if s.attack > 0 else np.ones_like(t)
    return attack * (s.sustain + (1 - s.sustain) * np.exp(-np.maximum(0.0, t - s.attack)
                                                          / s.decay))

  def note(self, pitch: int, velocity: int, on_samples: int) -> np.ndarray:
    """float32 waveform of one note, release tail included."""
    key = (pitch, velocity, on_samples)
    wave = self._notes.get(key)
    if wave is not None:
      return wave
    length = on_samples + self.release_samples
    self._held = self._grow(self._held, on_samples, self._held_block)
    held = self._held[:on_samples]
    env = np.concatenate([held, held[-1] * self._release_ramp])
    tone_key = (self.sample_rate, self.settings.num_harmonics,
                self.settings.harmonic_decay, pitch)
    tone = _TONES.get(tone_key, np.zeros(0))
    if len(tone) < length:
      f0 = midi_to_hz(pitch)
      tone = self._grow(tone, length, lambda index: self._tone_block(f0, index))
      # Other threads may render (and cache) at the same time: count over a
      # snapshot (list() copies the values without letting another thread
      # run), never over the live dict.
      cached = sum(len(t) for t in list(_TONES.values()))
      if cached + len(tone) > _MAX_CACHED_TONE_SAMPLES:
        _TONES.clear()
      _TONES[tone_key] = tone
    peak = self.settings.gain * min(max(velocity, 0), 127) / 127.0
    wave = (peak * env * tone[:length]).astype(np.float32)
    self._notes[key] = wave
    return wave


def render(ns: NoteSequence, sample_rate: int = DEFAULT_SAMPLE_RATE,
           settings: SynthSettings | None = None, **overrides: Any) -> np.ndarray:
  """Renders a NoteSequence to a mono waveform.

  Args:
    ns: the sequence; its note times are read in seconds. Drum notes are left
      out by the additive synthesizer.
    sample_rate: samples per second.
    settings: synthesis settings; None for the defaults.
    **overrides: SynthSettings fields that replace those of `settings`, e.g.
      `render(ns, num_harmonics=1)`.

  Returns:
    [num_samples] float32 waveform in [-1, 1]: the sequence's `total_time`
    (or its last note's end, if later) plus the release tail.
  """
  if int(sample_rate) != sample_rate or sample_rate <= 0:
    raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
  sample_rate = int(sample_rate)
  settings = settings or SynthSettings()
  if overrides:
    settings = dataclasses.replace(settings, **overrides)
  if settings.soundfont:
    return render_fluidsynth(ns, sample_rate, settings.soundfont, settings.program)
  cache = _NoteCache(settings, sample_rate)
  end_time = max([ns.total_time] + [n.end_time for n in ns.notes])
  out = np.zeros(int(math.ceil(end_time * sample_rate)) + cache.release_samples, np.float32)
  for n in ns.notes:
    if n.is_drum or n.end_time <= n.start_time:
      continue
    start = max(0, int(round(n.start_time * sample_rate)))
    on_samples = max(1, int(round(n.end_time * sample_rate)) - start)
    wave = cache.note(n.pitch, n.velocity, on_samples)
    out[start:start + len(wave)] += wave[:len(out) - start]
  peak = float(np.max(np.abs(out))) if len(out) else 0.0
  if peak > 1.0:
    out /= peak
  return out


def render_fluidsynth(ns: NoteSequence, sample_rate: int, soundfont: str,
                      program: int = -1) -> np.ndarray:
  """Renders with FluidSynth and a SoundFont (peak-normalized by pretty_midi).

  Args:
    ns: the sequence.
    sample_rate: samples per second.
    soundfont: path of a .sf2 file.
    program: General MIDI program for every non-drum note; -1 keeps them.

  Returns:
    [num_samples] float32 waveform in [-1, 1].

  Raises:
    FileNotFoundError: no file at `soundfont`.
    ImportError: pyfluidsynth or the FluidSynth library is not installed.
  """
  if not os.path.isfile(soundfont):
    raise FileNotFoundError(f"SoundFont not found: {soundfont!r}")
  try:
    importlib.import_module("fluidsynth")  # Loads the FluidSynth library, too.
  except (ImportError, OSError) as e:
    raise ImportError(
        f"Rendering with soundfont={soundfont!r} needs FluidSynth: install the "
        "library (apt-get install fluidsynth, or brew install fluid-synth) and "
        "the Python binding (pip install pyfluidsynth); or leave soundfont "
        f"empty to use the built-in additive synthesizer. ({type(e).__name__}: {e})"
    ) from e
  from note_seq import midi_synth  # pylint: disable=import-outside-toplevel
  if program >= 0:
    ns = NoteSequence.FromString(ns.SerializeToString())
    for n in ns.notes:
      if not n.is_drum:
        n.program = program
  audio = np.asarray(midi_synth.fluidsynth(ns, sample_rate, sf2_path=soundfont), np.float32)
  peak = float(np.max(np.abs(audio))) if audio.size else 0.0
  return audio / peak if peak > 1.0 else audio
