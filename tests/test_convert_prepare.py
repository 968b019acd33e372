"""Tests for JSB loading, file conversion, shards and the prepare entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from musegen_jax import prepare as prepare_lib
from musegen_jax.data import convert
from musegen_jax.data import jsb
from musegen_jax.data import shards

_ABC_BOOK = """X:1
T:First
M:4/4
L:1/8
K:G
GABc dedB|

X:2
T:Second
K:D
DEF|

X:3
T:Tuplet
K:C
(3abc|
"""

_MUSICXML = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1">
<part-list><score-part id="P1"><part-name>M</part-name></score-part></part-list>
<part id="P1"><measure number="1">
<attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time>
</attributes>
<note><pitch><step>C</step><octave>4</octave></pitch><duration>2</duration></note>
<note><pitch><step>E</step><octave>4</octave></pitch><duration>2</duration></note>
</measure></part></score-partwise>
"""


def _write(path, data: bytes | str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
  return str(path)


def _note_tuples(ns):
  return sorted((round(n.start_time, 4), round(n.end_time, 4), n.pitch) for n in ns.notes)


@pytest.fixture(scope="module")
def jsb_midi_dir(tmp_path_factory):
  """All 382 chorales written as MIDI once for the module."""
  out = str(tmp_path_factory.mktemp("jsb_midi"))
  paths = jsb.write_jsb_midi(out)
  return out, paths


@pytest.fixture
def corpus(tmp_path, jsb_midi_dir):
  """10 chorales as MIDI (two in a subfolder), a corrupt, an empty and a text file."""
  root = tmp_path / "corpus"
  good = []
  for i in range(10):
    rel = f"{'sub/' if i < 2 else ''}piece_{i:02d}.mid"
    shutil.copy(os.path.join(jsb_midi_dir[0], "train", f"jsb_train_{i:03d}.mid"),
                _write(root / rel, b""))
    good.append(rel)
  _write(root / "corrupt.mid", bytes(range(256)) * 4)
  _write(root / "empty.mid", b"")
  _write(root / "notes.txt", "not music")
  _write(root / ".DS_Store", "hidden, ignored")
  return str(root), good


def test_load_jsb_counts_and_split_lists():
  data = jsb.load_jsb()
  assert {k: len(v) for k, v in data.items()} == {"train": 229, "valid": 76, "test": 77}
  valid = jsb.load_jsb("valid")
  assert [ns.id for ns in valid] == [f"jsb/valid/{i:03d}" for i in range(76)]
  with pytest.raises(ValueError, match="bogus"):
    jsb.load_jsb("bogus")


def test_jsb_held_notes_merge_and_metadata():
  frames = jsb.load_jsb_frames()["train"][0]
  ns = jsb.load_jsb("train")[0]
  soprano = [f[0] for f in frames]
  runs = sum(1 for t, p in enumerate(soprano) if p >= 0 and (t == 0 or soprano[t - 1] != p))
  soprano_notes = [n for n in ns.notes if n.instrument == 0]
  assert len(soprano_notes) == runs < len(frames)
  assert sorted({n.instrument for n in ns.notes}) == [0, 1, 2, 3]
  assert len(ns.tempos) == 1 and ns.tempos[0].qpm == jsb.JSB_QPM == 100.0
  assert (ns.time_signatures[0].numerator, ns.time_signatures[0].denominator) == (4, 4)
  assert ns.ticks_per_quarter == 220 and ns.collection_name == "jsb_chorales"
  assert ns.id == ns.filename == "jsb/train/000"
  assert ns.total_time == pytest.approx(len(frames) * 0.15)
  assert all(n.velocity == 80 and n.program == 0 for n in ns.notes)
  assert not ns.quantization_info.steps_per_quarter  # Unquantized.


def test_frames_to_note_sequence_rests_split_notes():
  frames = [[60, 48], [60, 48], [-1, 48], [60, -1], [62, -1]]
  ns = jsb.frames_to_note_sequence(frames, "x")
  got = sorted((n.instrument, n.pitch, round(n.start_time, 6), round(n.end_time, 6))
               for n in ns.notes)
  assert got == [(0, 60, 0.0, 0.3), (0, 60, 0.45, 0.6), (0, 62, 0.6, 0.75), (1, 48, 0.0, 0.45)]


def test_write_jsb_midi_reads_back(jsb_midi_dir):
  out, paths = jsb_midi_dir
  assert len(paths) == 382
  assert paths[0] == os.path.join(out, "train", "jsb_train_000.mid")
  assert len(os.listdir(os.path.join(out, "test"))) == 77
  for split, index in (("train", 0), ("test", 76)):
    path = os.path.join(out, split, f"jsb_{split}_{index:03d}.mid")
    back = convert.file_to_note_sequence(path, root=out)
    assert back.filename == back.id == f"{split}/jsb_{split}_{index:03d}.mid"
    assert _note_tuples(back) == _note_tuples(jsb.load_jsb(split)[index])
    assert back.tempos[0].qpm == pytest.approx(100.0)


def test_convert_abc_musicxml_and_errors(tmp_path):
  book = _write(tmp_path / "book.abc", _ABC_BOOK)
  problems = []
  tunes = convert.file_to_note_sequences(book, str(tmp_path), problems)
  assert [ns.id for ns in tunes] == ["book.abc#1", "book.abc#2"]
  assert [len(ns.notes) for ns in tunes] == [8, 3]
  assert len(problems) == 1 and "Tuplet" in problems[0]
  with pytest.raises(convert.ConversionError, match="holds 2 tunes"):
    convert.file_to_note_sequence(book)

  xml = convert.file_to_note_sequence(_write(tmp_path / "s.musicxml", _MUSICXML))
  assert [n.pitch for n in xml.notes] == [60, 64]

  bad = {
      "corrupt.mid": (bytes(range(256)), "MIDIConversionError"),
      "empty.mid": (b"", "empty file"),
      "bad.xml": ("hello", "MusicXMLConversionError"),
      "title_only.abc": ("X:1\nT:No notes\nK:C\n", "no notes"),
      "notes.txt": ("text", "unsupported extension '.txt'"),
  }
  for name, (data, reason) in bad.items():
    path = _write(tmp_path / name, data)
    with pytest.raises(convert.ConversionError) as info:
      convert.file_to_note_sequences(path)
    assert isinstance(info.value, ValueError)
    assert info.value.path == path and reason in info.value.reason
    assert name in str(info.value)


def test_prepare_folder_skips_bad_files(corpus, tmp_path, capfd):
  root, good = corpus
  out = str(tmp_path / "out")
  metadata = prepare_lib.prepare(root, out, num_workers=2, num_shards=2)

  report = json.load(open(os.path.join(out, prepare_lib.REPORT_FILE)))
  reasons = {entry["file"]: entry["reason"] for entry in report}
  assert set(reasons) == {"corrupt.mid", "empty.mid", "notes.txt"}
  assert "MThd" in reasons["corrupt.mid"] and reasons["empty.mid"] == "empty file"
  assert "unsupported extension" in reasons["notes.txt"]
  assert "skipped corrupt.mid: " in capfd.readouterr().err
  assert metadata["skipped"] == 3 and metadata == shards.read_metadata(out)
  assert metadata["source"] == os.path.abspath(root)

  ids = {}
  for split, info in metadata["splits"].items():
    if not info["num_sequences"]:
      continue
    paths = shards.split_paths(out, split)
    assert [os.path.basename(p) for p in paths] == info["shards"]
    seqs = list(shards.read_note_sequences(paths))
    assert len(seqs) == info["num_sequences"]
    assert sum(len(ns.notes) for ns in seqs) == info["num_notes"]
    assert [ns.id for ns in seqs] == sorted(ns.id for ns in seqs)  # Deterministic order.
    ids.update({ns.id: split for ns in seqs})
  assert ids == {rel: shards.split_for_path(rel) for rel in good}
  lo, hi = metadata["pitch_range"]
  assert 30 <= lo < hi <= 90

  # Same splits and records in process, with one shard per split.
  again = prepare_lib.prepare(root, str(tmp_path / "again"), num_workers=0, num_shards=1)
  for split, info in metadata["splits"].items():
    assert again["splits"][split]["num_sequences"] == info["num_sequences"]
    if info["num_sequences"]:
      assert (list(shards.read_records(shards.split_paths(out, split)))
              == list(shards.read_records(shards.split_paths(str(tmp_path / "again"), split))))


def test_prepare_without_music_fails_and_writes_no_metadata(tmp_path):
  _write(tmp_path / "in" / "empty.mid", b"")
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match="could be converted"):
    prepare_lib.prepare(str(tmp_path / "in"), out, num_workers=0)
  assert json.load(open(os.path.join(out, prepare_lib.REPORT_FILE)))[0]["file"] == "empty.mid"
  with pytest.raises(FileNotFoundError):
    shards.read_metadata(out)


def test_split_folders_honoured(tmp_path, jsb_midi_dir):
  root = tmp_path / "corpus"
  src = os.path.join(jsb_midi_dir[0], "valid", "jsb_valid_000.mid")
  rels = ["train/a.mid", "Validation/b.mid", "val/deep/c.mid", "test/d.mid", "e.mid"]
  for rel in rels:
    shutil.copy(src, _write(root / rel, b""))
  # Output folders inside the input folder are not read back as input.
  out = str(root / "prepared")
  midi_out = str(root / "midi")
  prepare_lib.prepare(str(root), out, num_workers=0, write_midi=midi_out)
  metadata = prepare_lib.prepare(str(root), out, num_workers=0, write_midi=midi_out)
  assert metadata["skipped"] == 0
  got = {ns.id: split for split in ("train", "valid", "test")
         if metadata["splits"][split]["num_sequences"]
         for ns in shards.read_note_sequences(shards.split_paths(out, split))}
  assert got == {"train/a.mid": "train", "Validation/b.mid": "valid", "val/deep/c.mid": "valid",
                 "test/d.mid": "test", "e.mid": shards.split_for_path("e.mid")}
  assert os.path.isfile(os.path.join(midi_out, "valid", "val", "deep", "c.mid"))


def test_prepare_one_file_goes_into_every_split(tmp_path, jsb_midi_dir):
  src = os.path.join(jsb_midi_dir[0], "valid", "jsb_valid_000.mid")
  out = str(tmp_path / "one")
  metadata = prepare_lib.prepare(src, out, num_workers=0, num_shards=1)
  assert metadata["skipped"] == 0
  pieces = []
  for split in ("train", "valid", "test"):
    assert metadata["splits"][split]["num_sequences"] == 1
    (ns,) = shards.read_note_sequences(shards.split_paths(out, split))
    pieces.append(_note_tuples(ns))
  assert pieces[0] and pieces[0] == pieces[1] == pieces[2]


def test_split_for_path_hash_is_deterministic():
  assert shards.split_for_path("x/test.mid") == shards.split_for_path("x/test.mid")
  counts = {"train": 0, "valid": 0, "test": 0}
  for i in range(2000):
    counts[shards.split_for_path(f"song_{i}.mid", 0.2, 0.1)] += 1
  assert 1300 < counts["train"] < 1500 and 330 < counts["valid"] < 470
  assert 130 < counts["test"] < 270
  assert shards.split_for_path("a/b.mid", 0.0, 0.0) == "train"
  with pytest.raises(ValueError, match="valid_fraction=0.6"):
    shards.split_for_path("a.mid", 0.6, 0.5)


def test_write_split_shards_are_contiguous_and_atomic(tmp_path):
  out = str(tmp_path)
  records = [b"r%d" % i for i in range(10)]
  paths = shards.write_split(records, out, "train", 3)
  assert [os.path.basename(p) for p in paths] == [
      f"train-0000{i}-of-00003.array_record" for i in range(3)]
  assert [len(list(shards.read_records([p]))) for p in paths] == [3, 3, 4]
  assert list(shards.read_records(paths)) == records
  assert len(shards.write_split(records[:2], out, "valid", 5)) == 2
  assert shards.write_split([], out, "test", 4) == []
  with pytest.raises(FileNotFoundError, match="'test'"):
    shards.split_paths(out, "test")

  # An interrupted write leaves only hidden temporaries, which readers ignore.
  with pytest.raises(RuntimeError):
    with shards.SplitWriter(out, "test", 2) as writer:
      writer.write(b"x")
      raise RuntimeError("interrupted")
  _write(tmp_path / ".tmp-test-stale", b"partial")
  _write(tmp_path / ".tmp-train-stale", b"partial")
  assert shards.split_paths(out, "train") == paths
  with pytest.raises(FileNotFoundError):
    shards.split_paths(out, "test")
  with pytest.raises(FileNotFoundError, match="musegen_jax.prepare"):
    shards.read_metadata(out)
  os.remove(paths[1])
  with pytest.raises(ValueError, match="Incomplete"):
    shards.split_paths(out, "train")

  # A new run replaces old shards, temporaries and metadata.
  shards.write_metadata(out, {"format_version": 1})
  shards.remove_shards(out)
  assert sorted(os.listdir(out)) == []


def test_read_metadata_rejects_other_versions(tmp_path):
  shards.write_metadata(str(tmp_path), {"format_version": 99})
  with pytest.raises(ValueError, match="format_version=99"):
    shards.read_metadata(str(tmp_path))


def test_ensure_default_dataset_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("MUSEGEN_JAX_CACHE", str(tmp_path))
  data_dir = prepare_lib.ensure_default_dataset()
  assert data_dir == os.path.join(str(tmp_path), "jsb_chorales_v1")
  metadata = shards.read_metadata(data_dir)
  counts = {s: len(list(shards.read_records(shards.split_paths(data_dir, s))))
            for s in ("train", "valid", "test")}
  assert counts == {s: info["num_sequences"] for s, info in metadata["splits"].items()}
  assert counts == {"train": 229, "valid": 76, "test": 77}
  first = next(shards.read_note_sequences(shards.split_paths(data_dir, "train")))
  assert first.id == "jsb/train/000"
  stamp = os.stat(os.path.join(data_dir, "metadata.json")).st_mtime_ns
  assert prepare_lib.ensure_default_dataset(str(tmp_path)) == data_dir
  assert os.stat(os.path.join(data_dir, "metadata.json")).st_mtime_ns == stamp
  assert sorted(os.listdir(tmp_path)) == ["jsb_chorales_v1"]  # No temporaries left.


def test_ensure_default_dataset_concurrent(tmp_path):
  code = "from musegen_jax import prepare; print(prepare.ensure_default_dataset())"
  env = dict(os.environ, MUSEGEN_JAX_CACHE=str(tmp_path))
  procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            text=True) for _ in range(2)]
  outputs = [p.communicate()[0].strip() for p in procs]
  assert [p.returncode for p in procs] == [0, 0]
  assert outputs == [os.path.join(str(tmp_path), "jsb_chorales_v1")] * 2
  assert shards.read_metadata(outputs[0])["splits"]["test"]["num_sequences"] == 77
  assert sorted(os.listdir(tmp_path)) == ["jsb_chorales_v1"]


def test_command_line(corpus, tmp_path):
  root, good = corpus
  out = str(tmp_path / "cli")
  proc = subprocess.run(
      [sys.executable, "-m", "musegen_jax.prepare", f"--input={root}", f"--output={out}",
       "--num_workers=0", "--num_shards=1", "--test_fraction=0.2"],
      capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "skipped empty.mid: empty file" in proc.stderr
  metadata = shards.read_metadata(out)
  assert sum(s["num_sequences"] for s in metadata["splits"].values()) == len(good)
  assert metadata["settings"]["test_fraction"] == 0.2

  proc = subprocess.run(
      [sys.executable, "-m", "musegen_jax.prepare", f"--input={tmp_path / 'nope'}",
       f"--output={out}"], capture_output=True, text=True, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("error: --input=") and "no such file or folder" in proc.stderr
  assert len(proc.stderr.splitlines()) == 1, proc.stderr  # No --help dump.
  assert shards.read_metadata(out)  # A failed run leaves the earlier dataset alone.
