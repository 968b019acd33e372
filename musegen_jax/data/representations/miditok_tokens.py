"""MidiTok tokens: REMI, TSD, MIDILike or Structured, optionally with BPE.

MidiTok (https://github.com/Natooz/MidiTok) tokenizes a `symusic.Score`. A
NoteSequence gets there through MIDI bytes: its non-drum notes merged into
one piano track, with its tempos, written by note_seq/pretty_midi and read by
symusic. Tokens come back the same way (ids -> Score -> MIDI -> NoteSequence).
One track gives one token stream, with no Program tokens.

Ids are MidiTok's own: its special tokens are set to PAD and EOS only, so
PAD_None is id 0 and EOS_None id 1, as in every token representation here.
Time is in beats: positions/shifts and durations up to `max_beats` beats at
`beat_resolution` steps per beat; Tempo tokens (REMI, TSD, MIDILike; not
Structured) keep a piece's tempo to one of MidiTok's 32 tempo bins, so
decoded times in seconds are exact only where the tempo is a bin centre.

With `bpe_vocab_size` > 0 a byte-pair-encoding vocabulary of that size is
learned on the training split (`MidiTokRepresentation.build`); the pipeline
caches it beside the shards, in the file `cache_file(settings)` names. Either
way `settings()` carries the whole tokenizer (`params`: MidiTok's JSON form,
learned merges included), so an export bundle rebuilds the identical
tokenizer offline.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from musegen_jax import errors
from musegen_jax.data.representations import base

TOKENIZERS = ("REMI", "TSD", "MIDILike", "Structured")
SPECIAL_TOKENS = ("PAD", "EOS")
# Resolution of the MIDI files handed to MidiTok: fine, and a multiple of
# every usual beat resolution (2, 3, 4, 6, 8, 12, 16, 24, 32), so that times
# on the tokenizer's grid round to it exactly.
MIDI_TICKS_PER_QUARTER = 960


def _config_error(key: str, value: Any, allowed: str) -> errors.UserError:
  return errors.UserError(f"data.miditok.{key}={value!r}: {allowed}.")


def _check_int(key: str, value: Any, low: int, high: int | None = None) -> int:
  """`value` as an int in [low, high], or a UserError naming the key."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or
      value < low or (high is not None and value > high)):
    bound = f"{low}..{high}" if high is not None else f">= {low}"
    raise _config_error(key, value, f"expected an int {bound}")
  return int(value)


class MidiTokRepresentation(base.TokenRepresentation):
  """Encodes NoteSequences as MidiTok token ids.

  Args:
    tokenizer: one of TOKENIZERS.
    pitch_low, pitch_high: the MIDI pitches tokenized (inclusive); notes
      outside are dropped.
    beat_resolution: time steps per beat (positions, shifts, durations).
    max_beats: the longest duration / time shift in beats; longer gaps take
      several tokens, longer notes are shortened.
    num_velocities: velocity classes (1..127).
    use_tempos: Tempo tokens (Structured has none).
    bpe_vocab_size: 0, or the vocabulary size that BPE learns (`build`).
    params: MidiTok's JSON form of the tokenizer (`settings()["params"]`);
      given, it is the tokenizer (the settings above describe it and key
      the cache). Needed when `bpe_vocab_size` > 0.
  """

  name = "miditok"

  def __init__(self, tokenizer: str = "REMI", pitch_low: int = 21,
               pitch_high: int = 108, beat_resolution: int = 8,
               max_beats: int = 8, num_velocities: int = 32,
               use_tempos: bool = True, bpe_vocab_size: int = 0,
               params: dict[str, Any] | None = None):
    if tokenizer not in TOKENIZERS:
      raise _config_error("tokenizer", tokenizer,
                          "not a MidiTok tokenizer this representation "
                          f"supports; allowed: {', '.join(TOKENIZERS)}")
    self.tokenizer = tokenizer
    self.pitch_low = _check_int("pitch_low", pitch_low, 0, 127)
    self.pitch_high = _check_int("pitch_high", pitch_high, self.pitch_low, 127)
    self.beat_resolution = _check_int("beat_resolution", beat_resolution, 1)
    self.max_beats = _check_int("max_beats", max_beats, 1)
    self.num_velocities = _check_int("num_velocities", num_velocities, 1, 127)
    if not isinstance(use_tempos, (bool, np.bool_)):
      raise _config_error("use_tempos", use_tempos, "expected True or False")
    self.use_tempos = bool(use_tempos)
    self.bpe_vocab_size = _check_int("bpe_vocab_size", bpe_vocab_size, 0)
    if params is None:
      if self.bpe_vocab_size:
        raise ValueError(
            f"data.miditok.bpe_vocab_size={self.bpe_vocab_size}: the BPE "
            "vocabulary is learned from data; build it with "
            "MidiTokRepresentation.build(train_sequences, ...) "
            "(pipeline.load_representation does, and caches it).")
      self._tokenizer = self._new_tokenizer()
    else:
      if params.get("tokenization") != tokenizer:
        raise ValueError(
            f"MidiTok params are of tokenizer {params.get('tokenization')!r}, "
            f"not {tokenizer!r}.")
      self._tokenizer = _load_tokenizer(params)
      if self._tokenizer.is_trained != bool(self.bpe_vocab_size):
        raise ValueError(
            f"MidiTok params {'hold' if self._tokenizer.is_trained else 'lack'}"
            f" a learned vocabulary, but bpe_vocab_size={self.bpe_vocab_size}.")
    # JSON-normalized, so a tokenizer rebuilt from these settings reports
    # equal ones (tuples become lists either way).
    self._params = json.loads(json.dumps(self._tokenizer.to_dict()))
    vocab = self._tokenizer.vocab
    if vocab.get("PAD_None") != self.pad_id or vocab.get("EOS_None") != self.eos_id:
      raise ValueError(
          f"MidiTok put PAD at {vocab.get('PAD_None')} and EOS at "
          f"{vocab.get('EOS_None')}; expected {self.pad_id} and {self.eos_id}.")

  @classmethod
  def full_settings(cls, settings: dict[str, Any] | None) -> dict[str, Any]:
    """`settings` with the defaults filled in (params left out).

    Raises:
      errors.UserError: a key that is not a setting.
    """
    signature = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in signature.items()
                if k not in ("self", "params")}
    settings = dict(settings or {})
    settings.pop("params", None)
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
      raise errors.UserError(
          f"data.miditok has no setting {unknown[0]!r}; settings: "
          f"{', '.join(defaults)}.")
    return {**defaults, **settings}

  @classmethod
  def cache_file(cls, settings: dict[str, Any] | None) -> str | None:
    """The file name, under a prepared dataset's cache/, of the tokenizer
    learned on its train split with `settings`; None without BPE (nothing is
    learned). The name holds a digest of all the settings."""
    full = cls.full_settings(settings)
    if not full["bpe_vocab_size"]:
      return None
    digest = hashlib.sha256(
        json.dumps(full, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return f"miditok_{full['tokenizer']}_bpe{full['bpe_vocab_size']}_{digest}.json"

  @classmethod
  def build(cls, sequences: Iterable[base.NoteSequence],
            **settings: Any) -> MidiTokRepresentation:
    """The representation of `settings`, its BPE vocabulary (if any) learned
    on `sequences`.

    Args:
      sequences: the (training) sequences.
      **settings: constructor settings (no `params`).

    Returns:
      the representation, its learned tokenizer in `settings()["params"]`.
    """
    settings = cls.full_settings(settings)
    size = settings["bpe_vocab_size"]
    rep = cls(**{**settings, "bpe_vocab_size": 0})
    if not size:
      return rep
    if size <= rep.vocab_size:
      raise _config_error(
          "bpe_vocab_size", size,
          f"must exceed the {rep.tokenizer} base vocabulary of {rep.vocab_size} "
          "tokens (0 turns BPE off)")
    tokenizer = rep._tokenizer  # pylint: disable=protected-access
    with tempfile.TemporaryDirectory(prefix="musegen_miditok-") as tmp:
      paths = []
      for i, ns in enumerate(sequences):
        path = os.path.join(tmp, f"{i:06d}.mid")
        with open(path, "wb") as f:
          f.write(rep.midi_bytes(ns))
        paths.append(path)
      if not paths:
        raise ValueError("No sequences to learn the BPE vocabulary from.")
      tokenizer.train(vocab_size=size, model="BPE", files_paths=paths)
    return cls(**settings, params=tokenizer.to_dict())

  def _new_tokenizer(self):
    import miditok  # pylint: disable=import-outside-toplevel
    config = miditok.TokenizerConfig(
        pitch_range=(self.pitch_low, self.pitch_high + 1),
        beat_res={(0, self.max_beats): self.beat_resolution},
        num_velocities=self.num_velocities,
        special_tokens=list(SPECIAL_TOKENS),
        use_tempos=self.use_tempos,
        use_time_signatures=False,
        use_programs=False)
    return getattr(miditok, self.tokenizer)(config)

  def settings(self) -> dict[str, Any]:
    return {"tokenizer": self.tokenizer, "pitch_low": self.pitch_low,
            "pitch_high": self.pitch_high,
            "beat_resolution": self.beat_resolution,
            "max_beats": self.max_beats, "num_velocities": self.num_velocities,
            "use_tempos": self.use_tempos,
            "bpe_vocab_size": self.bpe_vocab_size, "params": self._params}

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items()
                     if k != "params")
    return f"{type(self).__name__}({args})"

  # Pickled (grain workers) as its settings: the tokenizer is rebuilt.
  def __getstate__(self) -> dict[str, Any]:
    return self.settings()

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)  # pylint: disable=unnecessary-dunder-call

  @property
  def vocab_size(self) -> int:
    return len(self._tokenizer)

  def midi_bytes(self, ns: base.NoteSequence) -> bytes:
    """The MIDI file that is tokenized: `ns`'s non-drum notes on one piano
    track, with its tempos and time signatures."""
    import note_seq  # pylint: disable=import-outside-toplevel
    merged = base.NoteSequence()
    merged.ticks_per_quarter = MIDI_TICKS_PER_QUARTER
    merged.tempos.extend(ns.tempos)
    merged.time_signatures.extend(ns.time_signatures)
    for note in ns.notes:
      if not note.is_drum:
        merged.notes.add(pitch=note.pitch, velocity=note.velocity,
                         start_time=note.start_time, end_time=note.end_time)
    merged.total_time = max((n.end_time for n in merged.notes), default=0.0)
    buffer = io.BytesIO()
    note_seq.note_sequence_to_pretty_midi(merged).write(buffer)
    return buffer.getvalue()

  def encode(self, ns: base.NoteSequence, add_eos: bool = True) -> np.ndarray:
    """Encodes a NoteSequence as MidiTok ids (BPE-encoded where learned).

    Args:
      ns: the sequence.
      add_eos: whether to end the tokens with EOS.

    Returns:
      [length] int32 token ids.
    """
    import symusic  # pylint: disable=import-outside-toplevel
    score = symusic.Score.from_midi(self.midi_bytes(ns))
    streams = self._tokenizer.encode(score)
    if not isinstance(streams, list):
      streams = [streams]
    if len(streams) > 1:
      raise ValueError(f"Expected one token stream, MidiTok gave {len(streams)}.")
    ids = list(streams[0].ids) if streams else []
    if add_eos:
      ids.append(self.eos_id)
    return np.asarray(ids, dtype=np.int32)

  def decode(self, x: np.ndarray) -> base.NoteSequence:
    """Decodes MidiTok ids into a NoteSequence.

    PAD is skipped and EOS ends the sequence; MidiTok skips tokens out of
    their grammar's order (a sampled sequence always decodes).

    Args:
      x: [length] integer token ids.

    Returns:
      a NoteSequence, times in seconds at the decoded tempo (120 qpm without
      Tempo tokens).
    """
    import note_seq  # pylint: disable=import-outside-toplevel
    tokens = base.as_tokens(x)
    bad = tokens[(tokens < 0) | (tokens >= self.vocab_size)]
    if bad.size:
      raise ValueError(
          f"Token {bad[0]} is outside the vocabulary [0, {self.vocab_size}).")
    ends = np.flatnonzero(tokens == self.eos_id)
    if ends.size:
      tokens = tokens[:ends[0]]
    ids = tokens[tokens != self.pad_id].tolist()
    score = self._tokenizer.decode([ids]) if ids else None
    if score is None or score.note_num() == 0:
      return base.new_sequence()  # MIDI without notes does not parse.
    ns = note_seq.midi_to_note_sequence(score.dumps_midi())
    ns.notes.sort(key=lambda n: (n.start_time, n.pitch))
    return ns


def _load_tokenizer(params: dict[str, Any]):
  """A MidiTok tokenizer from its JSON form (MidiTok loads only from files)."""
  import miditok  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="musegen_miditok-") as tmp:
    path = os.path.join(tmp, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(params, f)
    return getattr(miditok, params["tokenization"])(params=path)

