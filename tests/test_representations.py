"""Tests for musegen_jax.data.representations, on hand-made and JSB sequences."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from musegen_jax.data import jsb
from musegen_jax.data import representations
from musegen_jax.data.representations import base
from musegen_jax.data.representations import ChordTokenRepresentation
from musegen_jax.data.representations import PerformanceRepresentation
from musegen_jax.data.representations import PianorollRepresentation

NUM_PIECES = 20


@pytest.fixture(scope="module")
def chorales():
  return jsb.load_jsb()


@pytest.fixture(scope="module")
def frames():
  """{split: pieces}, a piece a list of frames, a frame the set of pitches."""
  return {split: [[{p for p in frame if p >= 0} for frame in piece]
                  for piece in pieces]
          for split, pieces in jsb.load_jsb_frames().items()}


@pytest.fixture(scope="module")
def chord_rep(chorales):
  return ChordTokenRepresentation.build(chorales["train"])


def make_sequence(notes, qpm=120.0, total_time=None):
  """notes: (pitch, start, end) or (pitch, start, end, velocity) tuples."""
  ns = base.new_sequence(qpm)
  for pitch, start, end, *velocity in notes:
    ns.notes.add(pitch=pitch, start_time=start, end_time=end,
                 velocity=velocity[0] if velocity else 80)
  ns.total_time = max([n.end_time for n in ns.notes] + [total_time or 0.0])
  return ns


def note_tuples(ns):
  return sorted((n.pitch, round(n.start_time, 6), round(n.end_time, 6), n.velocity)
                for n in ns.notes)


def notes_by_pitch(ns):
  by_pitch = collections.defaultdict(list)
  for n in ns.notes:
    by_pitch[n.pitch].append(n)
  return by_pitch


def isolated_notes(ns, touching):
  """Notes no other note of the same pitch overlaps (or touches, if asked)."""
  slack = 1e-9 if touching else -1e-9
  isolated = []
  for notes in notes_by_pitch(ns).values():
    for a in notes:
      if not any(b is not a and b.start_time < a.end_time + slack
                 and a.start_time < b.end_time + slack for b in notes):
        isolated.append(a)
  return isolated


def sounding_steps(ns, steps_per_second):
  """{(pitch, step)} sounding, each note over [start, end) rounded to steps."""
  return {(n.pitch, t) for n in ns.notes
          for t in range(round(n.start_time * steps_per_second),
                         round(n.end_time * steps_per_second))}


# Registry.


def test_get_representation_rebuilds_from_json_settings(chord_rep):
  reps = [PerformanceRepresentation(steps_per_second=50, max_shift_steps=20),
          PianorollRepresentation(steps_per_quarter=2, qpm=90.0), chord_rep,
          representations.AudioRepresentation(sample_rate=8000, num_harmonics=3)]
  for rep in reps:
    settings = json.loads(json.dumps(rep.settings()))
    rebuilt = representations.get_representation(rep.name, **settings)
    assert rebuilt == rep
    assert rebuilt != representations.get_representation(rep.name)
  # MidiTok's rebuild from settings (its tokenizer, BPE merges) is
  # test_miditok.test_settings_rebuild_the_identical_tokenizer.
  assert ({rep.name for rep in reps} | {"miditok"}
          == set(representations.REPRESENTATIONS))


def test_get_representation_unknown_name_lists_known():
  with pytest.raises(ValueError, match="'midi'.*chord_token.*performance.*pianoroll"):
    representations.get_representation("midi")


# Performance.


def test_performance_vocabulary():
  rep = PerformanceRepresentation()
  assert (rep.vocab_size, rep.pad_id, rep.eos_id) == (390, 0, 1)
  names = [rep.event_name(i) for i in range(rep.vocab_size)]
  assert names[:3] == ["PAD", "EOS", "NOTE_ON(0)"]
  assert names[130] == "NOTE_OFF(0)"
  assert names[258] == "TIME_SHIFT(1)" and names[357] == "TIME_SHIFT(100)"
  assert names[358] == "VELOCITY(0)" and names[389] == "VELOCITY(31)"
  assert len(set(names)) == 390
  with pytest.raises(ValueError, match="390"):
    rep.event_name(390)
  small = PerformanceRepresentation(steps_per_second=10, num_velocity_bins=4,
                                    max_shift_steps=10)
  assert small.vocab_size == 2 + 128 + 128 + 10 + 4


def test_performance_encode_hand_made():
  rep = PerformanceRepresentation()
  ns = make_sequence([(60, 0.0, 0.5, 80), (64, 0.5, 1.0, 80), (67, 0.5, 3.0, 100)])
  tokens = rep.encode(ns)
  assert tokens.dtype == np.int32
  expected = ["VELOCITY(19)", "NOTE_ON(60)", "TIME_SHIFT(50)",
              "NOTE_OFF(60)", "NOTE_ON(64)", "VELOCITY(24)", "NOTE_ON(67)",
              "TIME_SHIFT(50)", "NOTE_OFF(64)",
              "TIME_SHIFT(100)", "TIME_SHIFT(100)", "NOTE_OFF(67)", "EOS"]
  assert [rep.event_name(t) for t in tokens] == expected
  np.testing.assert_array_equal(
      tokens, [377, 62, 307, 190, 66, 382, 69, 307, 194, 357, 357, 197, 1])
  assert list(rep.encode(ns, add_eos=False)) == list(tokens[:-1])
  assert note_tuples(rep.decode(tokens)) == [
      (60, 0.0, 0.5, 78), (64, 0.5, 1.0, 78), (67, 0.5, 3.0, 98)]
  assert list(rep.encode(make_sequence([]))) == [rep.eos_id]


def test_performance_splits_long_shifts():
  rep = PerformanceRepresentation(steps_per_second=10, max_shift_steps=4)
  ns = make_sequence([(60, 0.0, 0.1), (62, 1.1, 1.2)])
  names = [rep.event_name(t) for t in rep.encode(ns, add_eos=False)]
  assert names == ["VELOCITY(19)", "NOTE_ON(60)", "TIME_SHIFT(1)", "NOTE_OFF(60)",
                   "TIME_SHIFT(4)", "TIME_SHIFT(4)", "TIME_SHIFT(2)",
                   "NOTE_ON(62)", "TIME_SHIFT(1)", "NOTE_OFF(62)"]


def test_performance_same_pitch_overlaps_and_short_notes():
  rep = PerformanceRepresentation()
  ns = make_sequence([
      (60, 0.0, 1.0), (60, 0.5, 0.8),  # Re-struck while held: keeps sounding.
      (62, 0.0, 0.2), (62, 0.0, 0.4),  # Same onset: one note.
      (64, 1.0, 1.001),  # Rounds to zero length: gets one step.
  ])
  assert note_tuples(rep.decode(rep.encode(ns))) == [
      (60, 0.0, 0.5, 78), (60, 0.5, 1.0, 78), (62, 0.0, 0.4, 78), (64, 1.0, 1.01, 78)]


def test_performance_decode_is_lenient():
  rep = PerformanceRepresentation()
  on, off, shift = rep.note_on_offset, rep.note_off_offset, rep.time_shift_offset
  tokens = [0, off + 50,  # PAD, stray note-off.
            on + 60, shift + 9, on + 60,  # Re-struck: first note ends.
            shift + 9, on + 64, on + 64,  # Double note-on: one note.
            shift + 9,  # 60 and 64 are still sounding at the end.
            rep.eos_id, on + 70, shift + 9, off + 70]  # After EOS: ignored.
  ns = rep.decode(np.asarray(tokens))
  assert note_tuples(ns) == [(60, 0.0, 0.1, 64), (60, 0.1, 0.3, 64), (64, 0.2, 0.3, 64)]
  assert ns.total_time == pytest.approx(0.3)
  assert ns.tempos[0].qpm == 120 and ns.ticks_per_quarter == 220
  with pytest.raises(ValueError, match="390"):
    rep.decode(np.asarray([2, 390]))
  with pytest.raises(ValueError, match="shape"):
    rep.decode(np.zeros((2, 2), np.int32))


def test_performance_samples_cap_notes_whose_note_off_never_comes():
  rep = PerformanceRepresentation()
  on, off, shift = rep.note_on_offset, rep.note_off_offset, rep.time_shift_offset
  second = [shift + 99]  # 100 steps of 10 ms.
  tokens = ([on + 60, on + 62] + second * 2 + [off + 62] + second * 5 + [on + 64]
            + second * 7)  # 60 and 64 never end; 62 lasts 2 s.
  assert note_tuples(rep.decode(np.asarray(tokens))) == [
      (60, 0.0, 14.0, 64), (62, 0.0, 2.0, 64), (64, 7.0, 14.0, 64)]
  cap = representations.performance.SAMPLE_MAX_NOTE_SECONDS
  assert cap == 5.0
  assert note_tuples(rep.decode_sample(np.asarray(tokens))) == [
      (60, 0.0, cap, 64), (62, 0.0, 2.0, 64), (64, 7.0, 7.0 + cap, 64)]
  # Encoded pieces decode as they are; other representations' samples too.
  long_note = make_sequence([(60, 0.0, 9.0)])
  assert note_tuples(rep.decode(rep.encode(long_note)))[0][:3] == (60, 0.0, 9.0)
  roll = PianorollRepresentation()
  frames = roll.encode(long_note)
  assert note_tuples(roll.decode_sample(frames)) == note_tuples(roll.decode(frames))


def test_performance_round_trip_on_jsb(chorales):
  rep = PerformanceRepresentation()
  bin_width = 127 / rep.num_velocity_bins
  for ns in chorales["train"][:NUM_PIECES]:
    tokens = rep.encode(ns)
    assert tokens.dtype == np.int32
    assert tokens.min() >= 1 and tokens.max() < rep.vocab_size
    assert tokens[-1] == rep.eos_id and np.sum(tokens == rep.eos_id) == 1
    decoded = rep.decode(tokens)
    np.testing.assert_array_equal(rep.encode(decoded), tokens)
    assert decoded.total_time == pytest.approx(ns.total_time)
    # Unison voices overlap at one pitch, so compare what can be kept: the
    # sounding pitches at every step, every onset, and the other notes exactly.
    assert sounding_steps(decoded, 100) == sounding_steps(ns, 100)
    for pitch, notes in notes_by_pitch(decoded).items():
      onsets = {round(n.start_time * 100) for n in notes_by_pitch(ns)[pitch]}
      assert {round(n.start_time * 100) for n in notes} == onsets
    decoded_notes = {(n.pitch, round(n.start_time * 100), round(n.end_time * 100)): n
                     for n in decoded.notes}
    isolated = isolated_notes(ns, touching=False)
    assert len(isolated) > len(ns.notes) / 2
    for n in isolated:
      match = decoded_notes[(n.pitch, round(n.start_time * 100), round(n.end_time * 100))]
      assert abs(match.start_time - n.start_time) <= 0.005
      assert abs(match.end_time - n.end_time) <= 0.005
      assert abs(match.velocity - n.velocity) < bin_width


# Piano roll.


def test_pianoroll_hand_made():
  rep = PianorollRepresentation()  # 120 qpm, 4 steps per quarter: 0.125 s.
  ns = make_sequence([(60, 0.0, 0.5), (62, 0.25, 0.375), (64, 0.5, 0.5),
                      (10, 0.0, 1.0)], total_time=1.0)  # 10 is below the piano.
  roll = rep.encode(ns)
  assert roll.dtype == np.uint8 and roll.shape == (8, 88)
  expected = np.zeros((8, 88), np.uint8)
  expected[0:4, 60 - 21] = 1
  expected[2, 62 - 21] = 1
  expected[4, 64 - 21] = 1  # A zero-length note lasts one step.
  np.testing.assert_array_equal(roll, expected)
  decoded = rep.decode(roll)
  assert note_tuples(decoded) == [(60, 0.0, 0.5, 80), (62, 0.25, 0.375, 80),
                                  (64, 0.5, 0.625, 80)]
  assert decoded.total_time == 1.0 and decoded.tempos[0].qpm == 120
  # The sequence's tempo sets the grid: at 60 qpm a step is 0.25 s.
  slow = make_sequence([(60, 0.5, 1.0)], qpm=60.0)
  assert np.flatnonzero(rep.encode(slow)[:, 60 - 21]).tolist() == [2, 3]
  with pytest.raises(ValueError, match=r"\(8, 87\)"):
    rep.decode(np.zeros((8, 87)))


def test_pianoroll_round_trip_on_jsb(chorales, frames):
  rep = PianorollRepresentation(qpm=jsb.JSB_QPM)  # Decode at the corpus tempo.
  for ns, piece in zip(chorales["train"][:NUM_PIECES], frames["train"]):
    roll = rep.encode(ns)
    expected = np.zeros((len(piece), 88), np.uint8)
    for t, pitches in enumerate(piece):
      expected[t, [p - 21 for p in pitches]] = 1
    np.testing.assert_array_equal(roll, expected)
    decoded = rep.decode(roll)
    np.testing.assert_array_equal(rep.encode(decoded), roll)
    # A roll merges touching notes of one pitch; all other notes come back.
    isolated = isolated_notes(ns, touching=True)
    assert len(isolated) > len(ns.notes) / 2
    assert set(note_tuples(decoded)) >= {
        (n.pitch, round(n.start_time, 6), round(n.end_time, 6), 80) for n in isolated}


def test_pianoroll_steps_per_quarter_2(chorales, frames):
  rep = PianorollRepresentation(steps_per_quarter=2)
  for ns, piece in zip(chorales["train"][:NUM_PIECES], frames["train"]):
    roll = rep.encode(ns)
    assert roll.shape == ((len(piece) + 1) // 2, 88)
    np.testing.assert_array_equal(rep.encode(rep.decode(roll)), roll)
    # Every 8th-note frame sounds at least the pitches of its 16th frame.
    for t, pitches in enumerate(piece[::2]):
      assert {p - 21 for p in pitches} <= set(np.flatnonzero(roll[t]))


# Chord tokens.


def test_chord_token_hand_made():
  rep = ChordTokenRepresentation(steps_per_quarter=1, vocab=["60-64-67", "62"])
  assert rep.vocab_size == 6
  assert (rep.pad_id, rep.eos_id, rep.rest_id, rep.unk_id) == (0, 1, 2, 3)
  # 120 qpm, one step per quarter: 0.5 s frames.
  ns = make_sequence([(60, 0.0, 1.0), (64, 0.0, 1.0), (67, 0.0, 1.0),
                      (62, 1.0, 1.5), (61, 2.0, 2.5)])
  tokens = rep.encode(ns)
  assert tokens.dtype == np.int32
  assert tokens.tolist() == [4, 4, 5, 2, 3, 1]  # C major, D, rest, UNK, EOS.
  assert rep.encode(ns, add_eos=False).tolist() == [4, 4, 5, 2, 3]
  decoded = rep.decode(np.asarray([0] + tokens.tolist() + [5]))
  assert note_tuples(decoded) == [(60, 0.0, 1.0, 80), (62, 1.0, 1.5, 80),
                                  (64, 0.0, 1.0, 80), (67, 0.0, 1.0, 80)]
  assert decoded.total_time == 2.5
  with pytest.raises(ValueError, match="6"):
    rep.decode(np.asarray([6]))


def test_chord_token_bad_vocab():
  with pytest.raises(ValueError, match="'64-60'"):
    ChordTokenRepresentation(vocab=["64-60"])
  with pytest.raises(ValueError, match="'C'"):
    ChordTokenRepresentation(vocab=["C"])
  with pytest.raises(ValueError, match="duplicate.*'60'"):
    ChordTokenRepresentation(vocab=["60", "62", "60"])


def test_chord_token_build(chorales, chord_rep):
  assert ChordTokenRepresentation.build(chorales["train"]) == chord_rep
  assert chord_rep.vocab_size == 4 + len(chord_rep.vocab)
  counts = collections.Counter(
      tuple(sorted(chord_rep.token_pitches(t)))
      for ns in chorales["train"] for t in chord_rep.encode(ns, add_eos=False))
  assert () in counts  # JSB has rests.
  order = [(-counts[chord_rep.token_pitches(i)], key)
           for i, key in enumerate(chord_rep.vocab, start=chord_rep.num_special)]
  assert order == sorted(order)
  frequent = ChordTokenRepresentation.build(chorales["train"], min_count=5)
  assert frequent.vocab == chord_rep.vocab[:len(frequent.vocab)]
  assert 0 < len(frequent.vocab) < len(chord_rep.vocab)


def test_chord_token_round_trip_on_jsb(chorales, frames, chord_rep):
  for ns, piece in zip(chorales["train"][:NUM_PIECES], frames["train"]):
    tokens = chord_rep.encode(ns)
    assert tokens.dtype == np.int32 and tokens[-1] == chord_rep.eos_id
    assert 2 <= tokens[:-1].min() and tokens.max() < chord_rep.vocab_size
    assert chord_rep.unk_id not in tokens
    assert [set(chord_rep.token_pitches(t)) for t in tokens[:-1]] == piece
    np.testing.assert_array_equal(chord_rep.encode(chord_rep.decode(tokens)), tokens)


def test_chord_token_unseen_chord_is_unk(chorales, frames, chord_rep):
  known = set(chord_rep.vocab)
  for i, piece in enumerate(frames["valid"]):
    unseen = [t for t, pitches in enumerate(piece)
              if pitches and "-".join(map(str, sorted(pitches))) not in known]
    if unseen:
      break
  assert unseen, "every valid chord is in the train vocabulary"
  tokens = chord_rep.encode(chorales["valid"][i])
  assert np.flatnonzero(tokens == chord_rep.unk_id).tolist() == unseen
  # UNK decodes to silence.
  decoded_frames = chord_rep.encode(chord_rep.decode(tokens), add_eos=False)
  assert set(decoded_frames[unseen].tolist()) == {chord_rep.rest_id}
