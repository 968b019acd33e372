"""MidiTok representations: round trips, BPE learned and cached, settings that
rebuild the tokenizer, config errors, and a Transformer trained, exported and
sampled on REMI tokens of the bundled chorales."""

from __future__ import annotations

import json
import os
import pickle

import note_seq
import numpy as np
import pytest

from musegen_jax import errors
from musegen_jax import prepare as prepare_lib
from musegen_jax import train
from musegen_jax.data import jsb
from musegen_jax.data import pipeline
from musegen_jax.data import shards
from musegen_jax.data.representations import MidiTokRepresentation
from musegen_jax.data.representations import get_representation
from musegen_jax.data.representations import miditok_tokens

from conftest import load_config

QPM = 90.0


def _write_midi(path: str) -> str:
  """A two-instrument piece with a drum hit, written as MIDI: chords, voices
  that overlap, rests, velocities, all on an eighth-of-a-beat grid at 90 qpm."""
  ns = note_seq.NoteSequence(ticks_per_quarter=480)
  ns.tempos.add(time=0.0, qpm=QPM)
  beat = 60.0 / QPM
  notes = [  # (pitch, start beat, end beat, velocity, instrument)
      (60, 0, 1, 90, 0), (64, 0, 2, 70, 0), (67, 0, 0.5, 50, 0),
      (72, 0.5, 1.25, 100, 1), (48, 1, 4, 60, 1), (62, 1.125, 1.75, 80, 0),
      (65, 3, 3.375, 40, 0), (69, 6.5, 7, 110, 1), (36, 7, 8, 90, 1)]
  for pitch, start, end, velocity, instrument in notes:
    ns.notes.add(pitch=pitch, start_time=start * beat, end_time=end * beat,
                 velocity=velocity, instrument=instrument)
  ns.notes.add(pitch=38, start_time=0.0, end_time=0.1, velocity=100,
               instrument=9, is_drum=True)
  ns.total_time = 8 * beat
  note_seq.sequence_proto_to_midi_file(ns, path)
  return path


def _onsets(ns) -> list[tuple[int, float, float]]:
  """(pitch, onset, duration) in beats of the non-drum notes, by onset."""
  qpm = ns.tempos[0].qpm if ns.tempos else 120.0
  return sorted((n.pitch, round(n.start_time * qpm / 60, 3),
                 round((n.end_time - n.start_time) * qpm / 60, 3))
                for n in ns.notes if not n.is_drum)


@pytest.mark.parametrize("tokenizer", miditok_tokens.TOKENIZERS)
def test_round_trip_keeps_pitches_onsets_and_durations(tokenizer, tmp_path):
  ns = note_seq.midi_file_to_note_sequence(_write_midi(str(tmp_path / "a.mid")))
  rep = get_representation("miditok", tokenizer=tokenizer)
  tokens = rep.encode(ns)
  assert tokens.dtype == np.int32 and tokens[-1] == rep.eos_id
  assert rep.pad_id not in tokens and rep.eos_id not in tokens[:-1]
  assert tokens.max() < rep.vocab_size
  decoded = rep.decode(tokens)
  # Both instruments on one track, the drum left out; times in beats are
  # exact on the tokenizer's grid, whatever the tempo bin.
  assert _onsets(decoded) == _onsets(ns)
  if tokenizer != "Structured":  # Tempo tokens: the nearest of MidiTok's bins.
    assert abs(decoded.tempos[0].qpm - QPM) < 5
  # Velocities to the nearest of 32 classes.
  for a, b in zip(sorted(decoded.notes, key=lambda n: (n.start_time, n.pitch)),
                  sorted((n for n in ns.notes if not n.is_drum),
                         key=lambda n: (n.start_time, n.pitch))):
    assert abs(a.velocity - b.velocity) <= 4
  # PAD is skipped, EOS ends; a sampled jumble of ids still decodes.
  padded = np.concatenate([[rep.pad_id], tokens, [rep.pad_id] * 3, tokens])
  assert _onsets(rep.decode(padded)) == _onsets(ns)
  rng = np.random.default_rng(0)
  assert isinstance(rep.decode(rng.integers(0, rep.vocab_size, 300)),
                    note_seq.NoteSequence)
  assert not rep.decode([rep.eos_id]).notes
  with pytest.raises(ValueError, match="outside the vocabulary"):
    rep.decode([rep.vocab_size])


def test_bpe_is_learned_on_train_and_cached_by_settings(tmp_path, monkeypatch):
  root = tmp_path / "corpus"
  for split, pieces in (("train", jsb.load_jsb("train")[:6]),
                        ("valid", jsb.load_jsb("valid")[:1]),
                        ("test", jsb.load_jsb("test")[:1])):
    os.makedirs(root / split)
    for i, ns in enumerate(pieces):
      note_seq.sequence_proto_to_midi_file(ns, str(root / split / f"{i}.mid"))
  data_dir = str(tmp_path / "prepared")
  prepare_lib.prepare(str(root), data_dir, num_workers=0, num_shards=1,
                      progress=False)
  settings = {"tokenizer": "REMI", "bpe_vocab_size": 400}

  rep = pipeline.load_representation("miditok", data_dir, settings)
  base = get_representation("miditok", tokenizer="REMI")
  assert base.vocab_size < rep.vocab_size <= 400
  cache = os.path.join(data_dir, "cache",
                       MidiTokRepresentation.cache_file(settings))
  assert os.path.isfile(cache)
  train_ns = next(shards.read_note_sequences(shards.split_paths(data_dir, "train")))
  tokens = rep.encode(train_ns)
  assert len(tokens) < len(base.encode(train_ns))  # Merges shorten the piece.
  assert tokens.max() >= base.vocab_size
  assert _onsets(rep.decode(tokens)) == _onsets(base.decode(base.encode(train_ns)))

  # The second load reads the cache: nothing is learned again.
  def no_build(*args, **kwargs):
    raise AssertionError("learned again")
  monkeypatch.setattr(MidiTokRepresentation, "build", no_build)
  assert pipeline.load_representation("miditok", data_dir, settings) == rep
  # Defaults spelt out are the same key; other settings are another one.
  same = {**MidiTokRepresentation.full_settings({}), **settings}
  assert MidiTokRepresentation.cache_file(same) == os.path.basename(cache)
  names = {MidiTokRepresentation.cache_file({**settings, **change})
           for change in ({}, {"bpe_vocab_size": 450}, {"tokenizer": "TSD"},
                          {"beat_resolution": 4}, {"use_tempos": False})}
  assert len(names) == 5
  assert MidiTokRepresentation.cache_file({"bpe_vocab_size": 0}) is None
  monkeypatch.undo()
  other = pipeline.load_representation("miditok", data_dir,
                                       {**settings, "tokenizer": "TSD"})
  assert other.tokenizer == "TSD"
  assert sorted(os.listdir(os.path.join(data_dir, "cache"))) == sorted(
      [os.path.basename(cache),
       MidiTokRepresentation.cache_file({**settings, "tokenizer": "TSD"})])
  with pytest.raises(errors.UserError, match="must exceed the REMI base"):
    MidiTokRepresentation.build([train_ns], tokenizer="REMI", bpe_vocab_size=100)


@pytest.mark.parametrize("bpe", [0, 360])
def test_settings_rebuild_the_identical_tokenizer(bpe):
  pieces = jsb.load_jsb("train")[:4]
  rep = MidiTokRepresentation.build(pieces, tokenizer="TSD", bpe_vocab_size=bpe,
                                    beat_resolution=4, num_velocities=8)
  # As an export bundle stores it: JSON, with the whole tokenizer inside.
  spec = json.loads(json.dumps(pipeline.representation_spec(rep)))
  assert spec["settings"]["params"]["tokenization"] == "TSD"
  assert ("_model" in spec["settings"]["params"]) == bool(bpe)
  rebuilt = pipeline.representation_from_spec(spec)
  assert rebuilt == rep and rebuilt.vocab_size == rep.vocab_size
  assert pickle.loads(pickle.dumps(rep)) == rep  # grain workers
  for ns in jsb.load_jsb("valid")[:2]:
    np.testing.assert_array_equal(rebuilt.encode(ns), rep.encode(ns))
  tokens = rep.encode(pieces[0])
  assert _onsets(rebuilt.decode(tokens)) == _onsets(rep.decode(tokens))
  assert "params" not in repr(rep)


def test_config_section_and_errors(jsb_data_dir):
  config = load_config("transformer", data__representation="miditok")
  assert config.data.miditok.to_dict() == MidiTokRepresentation.full_settings({})
  config = load_config("lstm", data__representation="miditok",
                       data__miditok__tokenizer="MIDILike")
  rep = train.load_representation(config, jsb_data_dir)
  assert rep.tokenizer == "MIDILike" and rep.settings()["params"]
  config = load_config("transformer", data__representation="miditok",
                       data__miditok__tokenizer="Octuple")
  with pytest.raises(errors.UserError) as e:
    train.load_representation(config, jsb_data_dir)
  assert str(e.value) == (
      "data.miditok.tokenizer='Octuple': not a MidiTok tokenizer this "
      "representation supports; allowed: REMI, TSD, MIDILike, Structured.")
  for settings, match in (({"pitch_low": 80, "pitch_high": 60}, "pitch_high=60"),
                          ({"num_velocities": 0}, "num_velocities=0"),
                          ({"bpe_vocab_size": -1}, "bpe_vocab_size=-1"),
                          ({"steps": 4}, "no setting 'steps'")):
    with pytest.raises(errors.UserError, match=match):
      pipeline.load_representation("miditok", jsb_data_dir, settings)
  with pytest.raises(ValueError, match="learned from data"):
    get_representation("miditok", bpe_vocab_size=400)


@pytest.mark.slow
@pytest.mark.usefixtures("fewer_optimizations")
def test_transformer_on_remi_trains_exports_and_samples_midi(tmp_path):
  from musegen_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  from musegen_jax import sample as sample_lib  # pylint: disable=import-outside-toplevel
  workdir, bundle = str(tmp_path / "run"), str(tmp_path / "export")
  config = load_config("transformer", data__representation="miditok",
                       num_train_steps=4, log_every_steps=2, eval_every_steps=4,
                       num_eval_batches=1, checkpoint_every_steps=4,
                       sample_every_steps=0)
  train.train_and_evaluate(config, workdir)
  export_lib.export(workdir, bundle)
  with open(os.path.join(bundle, "representation.json"), encoding="utf-8") as f:
    spec = json.load(f)
  assert spec["name"] == "miditok"
  assert spec["settings"]["params"]["tokenization"] == "REMI"
  paths = sample_lib.sample(bundle, str(tmp_path / "samples"), num_samples=2,
                            length=48, seed=1)
  assert len(paths) == 2
  for path in paths:
    assert path.endswith(".mid")
    note_seq.midi_file_to_note_sequence(path)  # Reads back.
    assert os.path.getsize(path[:-4] + ".png") > 1000
