"""Audio data: the synthesizer, audio files and records, prepare, the cache, grain."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import re

import note_seq
import numpy as np
import pytest
import soundfile

from musegen_jax import prepare as prepare_lib
from musegen_jax.data import audio
from musegen_jax.data import pipeline
from musegen_jax.data import representations
from musegen_jax.data import shards
from musegen_jax.data import synth

SR = 16000


def _sequence(notes, total_time):
  """A NoteSequence of (pitch, velocity, start, end) notes."""
  ns = note_seq.NoteSequence(total_time=total_time)
  for pitch, velocity, start, end in notes:
    ns.notes.add(pitch=pitch, velocity=velocity, start_time=start, end_time=end)
  return ns


def _peak_hz(x, sample_rate):
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.fft.rfftfreq(len(x), 1 / sample_rate)[np.argmax(spectrum)]


def _sine(freq, seconds, sample_rate, amplitude=0.5):
  t = np.arange(int(round(seconds * sample_rate))) / sample_rate
  return amplitude * np.sin(2 * np.pi * freq * t)


def _write_audio_dataset(path, clips, num_shards=1, split="train"):
  """An audio dataset of float clips (or raw records) in one split."""
  os.makedirs(path, exist_ok=True)
  records = [c if isinstance(c, bytes) else audio.encode_audio_record(c) for c in clips]
  shards.write_split(records, str(path), split, num_shards)
  shards.write_metadata(str(path), {"format_version": shards.FORMAT_VERSION, "kind": "audio",
                                    "sample_rate": SR})
  return str(path)


@pytest.fixture
def tiny_ns_dir(jsb_data_dir, tmp_path):
  """A NoteSequence dataset of 3 train and 1 valid chorale (short ones)."""
  records = list(shards.read_records(shards.split_paths(jsb_data_dir, "train")))
  short = sorted(records, key=lambda r: shards.NoteSequence.FromString(r).total_time)[:4]
  out = str(tmp_path / "ns")
  os.makedirs(out)
  shards.write_split(short[:3], out, "train", 2)
  shards.write_split(short[3:], out, "valid", 1)
  shards.write_metadata(out, {"format_version": shards.FORMAT_VERSION, "source": "test"})
  return out


# Synthesizer.


def test_synth_fundamental_silence_determinism_and_gain():
  ns = _sequence([(69, 80, 0.5, 1.0)], total_time=2.0)
  wave = synth.render(ns, SR)
  release = int(0.1 * SR)
  assert wave.dtype == np.float32 and wave.shape == (2 * SR + release,)
  np.testing.assert_array_equal(wave, synth.render(ns, SR))  # Deterministic.
  assert np.all(wave[:SR // 2] == 0) and np.all(wave[SR + release + 1:] == 0)
  assert abs(_peak_hz(wave[SR // 2:SR], SR) - 440) < 3
  assert 0 < np.abs(wave).max() <= 1
  # Velocity scales the gain linearly.
  quiet = synth.render(_sequence([(69, 40, 0.5, 1.0)], 2.0), SR)
  np.testing.assert_allclose(quiet, wave / 2, atol=1e-6)
  # Harmonics above Nyquist are left out: at 8 kHz, C7 (2093 Hz) is a pure sine.
  high = synth.render(_sequence([(96, 100, 0.0, 1.0)], 1.0), 8000)[1000:7000]
  spectrum = np.abs(np.fft.rfft(high * np.hanning(len(high))))
  freqs = np.fft.rfftfreq(len(high), 1 / 8000)
  assert abs(freqs[np.argmax(spectrum)] - 2093) < 3
  assert spectrum[np.abs(freqs - (8000 - 2 * 2093)) < 20].max() < 1e-3 * spectrum.max()


def test_synth_limits_the_peak_and_settings_keys():
  chord = _sequence([(p, 127, 0.0, 0.5) for p in range(48, 72)], 0.5)
  wave = synth.render(chord, SR)
  assert np.abs(wave).max() == pytest.approx(1.0)
  # Fewer harmonics: another sound, and another cache key.
  ns = _sequence([(60, 90, 0.0, 0.5), (64, 90, 0.25, 0.75)], 1.0)
  assert not np.allclose(synth.render(ns, SR), synth.render(ns, SR, num_harmonics=1))
  default = synth.SynthSettings()
  assert synth.settings_key(default, SR) == synth.settings_key(synth.SynthSettings(), SR)
  assert len({synth.settings_key(default, SR), synth.settings_key(default, 22050),
              synth.settings_key(synth.SynthSettings(attack=0.02), SR)}) == 3
  with pytest.raises(ValueError, match="harmonic_decay"):
    synth.SynthSettings(harmonic_decay=0)


def test_fluidsynth_needs_a_soundfont_and_says_what_to_install(tmp_path, monkeypatch):
  ns = _sequence([(60, 90, 0.0, 0.5)], 0.5)
  with pytest.raises(FileNotFoundError, match="SoundFont"):
    synth.render(ns, SR, soundfont=str(tmp_path / "missing.sf2"))
  # pyfluidsynth missing (a None entry makes its import fail, installed or not).
  monkeypatch.setitem(sys.modules, "fluidsynth", None)
  sf2 = tmp_path / "font.sf2"
  sf2.write_bytes(b"RIFF")
  with pytest.raises(ImportError, match="pip install pyfluidsynth"):
    synth.render(ns, SR, soundfont=str(sf2))


def test_audio_representation_settings_round_trip():
  rep = representations.get_representation("audio", sample_rate=8000, num_harmonics=3)
  settings = json.loads(json.dumps(rep.settings()))
  assert representations.get_representation("audio", **settings) == rep
  assert rep != representations.get_representation("audio")
  assert rep.cache_key != representations.get_representation("audio").cache_key
  ns = _sequence([(60, 90, 0.0, 0.5)], 0.5)
  np.testing.assert_array_equal(rep.encode(ns), synth.render(ns, 8000, num_harmonics=3))
  with pytest.raises(NotImplementedError, match="does not decode"):
    rep.decode(rep.encode(ns))
  with pytest.raises(ValueError, match="bogus"):
    representations.get_representation("audio", bogus=1)


# Files and records.


def test_audio_records_round_trip_and_reject_garbage(tmp_path):
  x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0], np.float32)
  record = audio.encode_audio_record(x)
  np.testing.assert_allclose(audio.decode_audio_record(record),
                             [0, 0.5, -0.5, 1, -1, 1], atol=1 / 32767)
  assert audio.decode_audio_record(audio.encode_audio_record(np.zeros(0))).shape == (0,)
  for bad, reason in ((record[:-1], "header says"), (b"\x00" * 3, "shorter"),
                      (b"RIFF" + record[4:], "not an audio record"),
                      (note_seq.NoteSequence(total_time=1).SerializeToString(),
                       "not an audio record")):
    with pytest.raises(ValueError, match=reason):
      audio.decode_audio_record(bad)
  with pytest.raises(ValueError, match="mono"):
    audio.encode_audio_record(np.zeros((4, 2)))
  path = str(tmp_path / "x.wav")
  audio.write_wav(path, x, SR)
  info = soundfile.info(path)
  assert (info.samplerate, info.subtype, info.frames) == (SR, "PCM_16", 6)
  np.testing.assert_allclose(audio.read_audio_file(path, SR), np.clip(x, -1, 1), atol=1e-4)


@pytest.fixture
def audio_folder(tmp_path):
  """Real WAV/FLAC files at 22.05, 44.1 and 16 kHz, plus three bad files."""
  root = tmp_path / "sounds"
  (root / "train").mkdir(parents=True)
  (root / "valid").mkdir()
  soundfile.write(str(root / "train" / "a.wav"), _sine(440, 1.0, 22050), 22050)
  stereo = np.stack([_sine(330, 0.5, 44100, 0.6), _sine(330, 0.5, 44100, 0.2)], axis=1)
  soundfile.write(str(root / "train" / "b.flac"), stereo, 44100)
  soundfile.write(str(root / "valid" / "c.wav"), _sine(550, 0.25, SR), SR, subtype="PCM_16")
  (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(2000))
  (root / "empty.wav").write_bytes(b"")
  (root / "notes.txt").write_text("not audio")
  return str(root)


def test_prepare_audio_folder_resamples_and_reports_bad_files(audio_folder, tmp_path, capfd):
  out = tmp_path / "out"
  (out / "cache" / "audio-old").mkdir(parents=True)  # A stale cache is removed.
  metadata = prepare_lib.prepare(audio_folder, str(out), num_workers=0, sample_rate=SR,
                                 progress=False)
  assert not (out / "cache").exists()
  assert metadata == shards.read_metadata(str(out))
  assert metadata["kind"] == "audio" and metadata["sample_rate"] == SR
  reasons = {e["file"]: e["reason"]
             for e in json.load(open(out / prepare_lib.REPORT_FILE))}
  assert set(reasons) == {"corrupt.wav", "empty.wav", "notes.txt"} and metadata["skipped"] == 3
  assert "not readable audio" in reasons["corrupt.wav"]
  assert reasons["empty.wav"] == "empty file"
  assert "unsupported extension '.txt'" in reasons["notes.txt"]
  assert "skipped corrupt.wav: not readable audio" in capfd.readouterr().err

  train = [audio.decode_audio_record(r)
           for r in shards.read_records(shards.split_paths(str(out), "train"))]
  valid = [audio.decode_audio_record(r)
           for r in shards.read_records(shards.split_paths(str(out), "valid"))]
  assert [len(x) for x in train] == [SR, SR // 2] and [len(x) for x in valid] == [SR // 4]
  assert metadata["splits"]["train"]["num_clips"] == 2
  assert metadata["splits"]["train"]["total_seconds"] == pytest.approx(1.5)
  a, b = train
  assert abs(_peak_hz(a, SR) - 440) < 3 and abs(_peak_hz(b, SR) - 330) < 3
  assert np.abs(a[1000:-1000]).max() == pytest.approx(0.5, abs=0.01)
  assert np.abs(b[1000:-1000]).max() == pytest.approx(0.4, abs=0.01)  # Channels averaged.
  np.testing.assert_allclose(valid[0], _sine(550, 0.25, SR), atol=1e-4)


def test_prepare_mixed_folder_picks_music_unless_told(audio_folder, jsb_data_dir, tmp_path):
  ns = next(shards.read_note_sequences(shards.split_paths(jsb_data_dir, "valid")))
  note_seq.sequence_proto_to_midi_file(ns, os.path.join(audio_folder, "train", "piece.mid"))
  music = prepare_lib.prepare(audio_folder, str(tmp_path / "m"), num_workers=0, progress=False)
  assert music["kind"] == "note_sequence" and music["splits"]["train"]["num_sequences"] == 1
  reasons = {e["file"]: e["reason"] for e in json.load(
      open(tmp_path / "m" / prepare_lib.REPORT_FILE))}
  assert "--kind=audio" in reasons["train/a.wav"]
  sound = prepare_lib.prepare(audio_folder, str(tmp_path / "a"), num_workers=0,
                              progress=False, kind="audio", sample_rate=8000)
  assert sound["kind"] == "audio" and sound["splits"]["train"]["num_clips"] == 2
  assert sound["splits"]["train"]["total_seconds"] == pytest.approx(1.5)


# The rendered-audio cache.


def test_ensure_audio_dir_renders_once_per_settings(tiny_ns_dir, monkeypatch):
  rep = representations.get_representation("audio")
  audio_dir = audio.ensure_audio_dir(tiny_ns_dir, rep, progress=False)
  assert audio_dir == os.path.join(tiny_ns_dir, "cache", f"audio-{rep.cache_key}")
  metadata = audio.read_audio_metadata(audio_dir)
  assert metadata["sample_rate"] == SR and metadata["synth"] == synth.SynthSettings().to_dict()
  assert metadata["splits"]["train"]["num_clips"] == 3
  assert metadata["splits"]["valid"]["num_clips"] == 1
  assert len(shards.split_paths(audio_dir, "train")) == 2  # The source's shard layout.
  sequences = list(shards.read_note_sequences(shards.split_paths(tiny_ns_dir, "train")))
  clips = [audio.decode_audio_record(r)
           for r in shards.read_records(shards.split_paths(audio_dir, "train"))]
  for ns, clip in zip(sequences, clips):
    np.testing.assert_allclose(clip, rep.encode(ns), atol=1 / 32767)
  assert not [n for n in os.listdir(os.path.dirname(audio_dir)) if n.startswith(".")]

  def fail(*args, **kwargs):
    raise AssertionError("rendered again")

  monkeypatch.setattr(audio, "_render_dataset", fail)
  assert audio.ensure_audio_dir(tiny_ns_dir, rep) == audio_dir  # Reused.
  assert audio.ensure_audio_dir(audio_dir, rep) == audio_dir  # An audio dataset as is.
  with pytest.raises(ValueError, match="sample_rate=16000.*sample_rate=8000"):
    audio.ensure_audio_dir(audio_dir, representations.get_representation(
        "audio", sample_rate=8000))
  monkeypatch.undo()
  other = audio.ensure_audio_dir(tiny_ns_dir, representations.get_representation(
      "audio", num_harmonics=2), progress=False)
  assert other != audio_dir and os.path.isdir(audio_dir)
  # A changed source (prepared again, edited) is rendered again.
  shards.write_metadata(tiny_ns_dir, {"format_version": shards.FORMAT_VERSION,
                                      "source": "changed"})
  assert audio.ensure_audio_dir(tiny_ns_dir, rep, progress=False) == audio_dir
  assert audio.read_audio_metadata(audio_dir)["source_fingerprint"] != metadata[
      "source_fingerprint"]


def test_ensure_audio_dir_concurrent_calls_render_one_cache(tiny_ns_dir):
  rep = representations.get_representation("audio", num_harmonics=4)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    dirs = list(pool.map(lambda _: audio.ensure_audio_dir(tiny_ns_dir, rep, progress=False),
                         range(3)))
  assert len(set(dirs)) == 1
  assert os.listdir(os.path.join(tiny_ns_dir, "cache")) == [os.path.basename(dirs[0])]
  assert audio.read_audio_metadata(dirs[0])["splits"]["train"]["num_clips"] == 3


def test_ensure_audio_dir_names_a_bad_note_sequence_record(tiny_ns_dir, tmp_path):
  records = list(shards.read_records(shards.split_paths(tiny_ns_dir, "train")))
  records[2] = b"\xff\xff\xff\xff not a NoteSequence"
  bad = str(tmp_path / "bad")
  os.makedirs(bad)
  shards.write_split(records, bad, "train", 2)
  shards.write_metadata(bad, {"format_version": shards.FORMAT_VERSION})
  rep = representations.get_representation("audio")
  path = shards.split_paths(bad, "train")[1]
  with pytest.raises(pipeline.BadRecordError, match=re.escape(path) + " record 1: DecodeError"):
    audio.ensure_audio_dir(bad, rep, progress=False)
  assert not os.listdir(os.path.join(bad, "cache"))  # Nothing half-written.
  audio_dir = audio.ensure_audio_dir(bad, rep, progress=False, on_bad_record="skip")
  assert audio.read_audio_metadata(audio_dir)["splits"]["train"]["num_clips"] == 2


# The grain pipeline.


def _take(it, n):
  return [next(it)["audio"] for _ in range(n)]


def _train(audio_dir, **kwargs):
  settings = dict(slice_len=256, global_batch_size=4, seed=0, num_workers=0)
  settings.update(kwargs)
  return audio.create_train_dataset(audio_dir, **settings)


@pytest.fixture
def sine_dir(tmp_path):
  """Six clips: different tones and loudness, two shorter than a slice."""
  clips = [_sine(200 + 100 * i, 0.05 if i < 2 else 0.5, SR, 0.1 + 0.1 * i) for i in range(6)]
  return _write_audio_dataset(tmp_path / "sines", clips, num_shards=2)


def test_batches_are_normalized_clips(tiny_ns_dir, sine_dir):
  batch = next(iter(_train(sine_dir, slice_len=1024)))["audio"]
  assert batch.shape == (4, 1024, 1) and batch.dtype == np.float32
  np.testing.assert_allclose(np.abs(batch).max(axis=(1, 2)), 1.0)
  raw = np.concatenate(_take(iter(_train(sine_dir, slice_len=1024, normalize=False)), 6))
  assert np.abs(raw).max() <= 0.61 and np.abs(raw).max(axis=(1, 2)).min() > 0.09
  # Rendered chorales: real, varied music.
  audio_dir = audio.ensure_audio_dir(tiny_ns_dir, representations.get_representation("audio"),
                                     progress=False)
  chorale = next(iter(_train(audio_dir, slice_len=4096, global_batch_size=6)))["audio"]
  assert chorale.shape == (6, 4096, 1) and np.all(np.abs(chorale) <= 1)
  assert len({row.tobytes() for row in chorale}) == 6


def test_silent_clips_are_skipped(tmp_path):
  loud = _sine(500, 0.5, SR, 0.3)
  quiet = _sine(500, 0.5, SR, 0.001)  # RMS 0.0007: near-silent.
  audio_dir = _write_audio_dataset(tmp_path / "s", [np.zeros(SR), quiet, loud])
  rows = np.concatenate(_take(iter(_train(audio_dir, normalize=False)), 6))
  assert rows.shape == (24, 256, 1)
  np.testing.assert_allclose(np.abs(rows).max(axis=(1, 2)), 0.3, atol=0.01)
  # Partly silent: the offsets that land in the loud half win.
  half = np.concatenate([np.zeros(SR), _sine(500, 1.0, SR, 0.3)])
  half_dir = _write_audio_dataset(tmp_path / "h", [half])
  rows = np.concatenate(_take(iter(_train(half_dir, normalize=False)), 10))
  assert (np.sqrt((rows ** 2).mean(axis=(1, 2))) > 0.1).mean() > 0.8
  with pytest.raises(ValueError, match="no clips"):
    audio.eval_clips(_write_audio_dataset(tmp_path / "z", [np.zeros(SR)], split="valid"),
                     slice_len=256)


def test_same_seed_same_batches_and_resume(sine_dir):
  a = _take(iter(_train(sine_dir, seed=3)), 5)
  b = _take(iter(_train(sine_dir, seed=3)), 5)
  c = _take(iter(_train(sine_dir, seed=4)), 5)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))
  it = iter(_train(sine_dir))
  _take(it, 2)  # 8 of 6 clips: into the second epoch.
  state = it.get_state()
  expected = _take(it, 4)
  resumed = iter(_train(sine_dir))
  resumed.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(np.stack(_take(resumed, 4)), np.stack(expected))


def test_worker_process_resume(sine_dir):
  it = iter(_train(sine_dir, num_workers=1))
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 2)
  resumed = iter(_train(sine_dir, num_workers=1))
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack(_take(resumed, 2)), np.stack(expected))
  assert expected[0].shape == (4, 256, 1)
  del it, resumed


def test_a_garbled_record_is_named_by_shard_and_index_or_skipped(tmp_path):
  clips = [_sine(300 + 50 * i, 0.1, SR) for i in range(10)]
  clips[7] = audio.encode_audio_record(clips[7])[:-3]
  audio_dir = _write_audio_dataset(tmp_path / "bad", clips, num_shards=2)
  paths = shards.split_paths(audio_dir, "train")
  with pytest.raises(pipeline.BadRecordError,
                     match=re.escape(paths[1]) + r" record 2: ValueError: audio record"):
    _take(iter(_train(audio_dir, global_batch_size=2)), 10)
  it = iter(_train(audio_dir, global_batch_size=2, on_bad_record="skip", normalize=False))
  batches = [next(it) for _ in range(15)]  # Three epochs of the 10 records.
  rows = np.concatenate([b["audio"] for b in batches])
  assert rows.shape == (30, 256, 1) and np.abs(rows).max(axis=(1, 2)).min() > 0.4
  # The garbled record's place went to the next good one, counted once an epoch.
  counts = np.concatenate([b["bad_records"] for b in batches])
  assert sorted(set(counts.tolist())) == [0, 1] and counts.sum() == 3
  with pytest.raises(ValueError, match="on_bad_record"):
    _train(audio_dir, on_bad_record="ignore")


def test_eval_clips_are_deterministic_windows(tmp_path):
  clips = [_sine(440, 1.0, SR), np.zeros(SR // 2), _sine(220, 0.01, SR)]
  audio_dir = _write_audio_dataset(tmp_path / "e", clips, num_shards=2, split="valid")
  windows = audio.eval_clips(audio_dir, slice_len=4000)
  # 4 full windows of the first clip, none of the silent one, 1 padded short one.
  assert windows.shape == (5, 4000, 1) and windows.dtype == np.float32
  np.testing.assert_array_equal(windows, audio.eval_clips(audio_dir, slice_len=4000))
  np.testing.assert_allclose(np.abs(windows).max(axis=(1, 2)), 1.0)
  np.testing.assert_array_equal(windows[4, 160:], 0)
  assert audio.eval_clips(audio_dir, slice_len=4000, max_clips=2).shape == (2, 4000, 1)
  ns_dir = str(tmp_path / "ns_only")
  os.makedirs(ns_dir)
  shards.write_split([note_seq.NoteSequence(total_time=1).SerializeToString()], ns_dir,
                     "valid", 1)
  shards.write_metadata(ns_dir, {"format_version": shards.FORMAT_VERSION})
  with pytest.raises(ValueError, match="not audio: render it first"):
    audio.eval_clips(ns_dir, slice_len=4000)
