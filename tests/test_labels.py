"""Style labels in prepare: folders, manifests, composers, music21's corpus
(issue 28, part 1)."""

from __future__ import annotations

import json
import os

import pytest

from musegen_jax import errors
from musegen_jax import prepare as prepare_lib
from musegen_jax.data import corpora
from musegen_jax.data import labels
from musegen_jax.data import shards

# Three tunes per style, notes in the style's own register, so that a wrong
# label shows in the pitches too.
_STYLE_NOTES = {"baroque": "CDEF GABc", "folk": "c'd'e'f' g'a'b'c''", "jazz": "C,D,E,F, G,A,B,C"}


def _abc(title: str, notes: str, composer: str | None = None) -> str:
  header = f"X:1\nT:{title}\n" + (f"C:{composer}\n" if composer else "")
  return header + f"M:4/4\nL:1/8\nK:C\n{notes}|\n"


def _write(path: str, text: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def _labels_by_split(data_dir: str) -> dict[str, list[tuple[str, str]]]:
  """{split: sorted [(filename, label)]} read back from the shards."""
  return {split: sorted((ns.filename, labels.get_label(ns)) for ns in
                        shards.read_note_sequences(shards.split_paths(data_dir, split)))
          for split in shards.SPLITS}


def _style_folders(root: str, *, style_above_split: bool) -> dict[str, str]:
  """Two styles, one tune per split each; returns {relpath: style}."""
  written = {}
  for style in ("baroque", "folk"):
    for split in shards.SPLITS:
      rel = (f"{style}/{split}/{style}_{split}.abc" if style_above_split
             else f"{split}/{style}/{style}_{split}.abc")
      _write(os.path.join(root, rel), _abc(rel, _STYLE_NOTES[style]))
      written[rel] = style
  return written


@pytest.mark.parametrize("style_above_split", [True, False])
def test_folder_labels_with_split_folders_above_or_below(tmp_path, style_above_split):
  root, out = str(tmp_path / "in"), str(tmp_path / "out")
  written = _style_folders(root, style_above_split=style_above_split)
  metadata = prepare_lib.prepare(root, out, num_workers=0, labels="folder",
                                 progress=False)
  assert metadata["labels"]["names"] == ["baroque", "folk"]
  assert metadata["labels"]["counts"] == {
      split: {"baroque": 1, "folk": 1} for split in shards.SPLITS}
  assert json.load(open(os.path.join(out, shards.METADATA_FILE)))["labels"] == metadata["labels"]
  read_back = _labels_by_split(out)
  for split in shards.SPLITS:
    assert read_back[split] == sorted((rel, style) for rel, style in written.items()
                                      if f"/{split}/" in f"/{rel}")


def test_manifest_labels_and_its_errors(tmp_path):
  root, out = str(tmp_path / "in"), str(tmp_path / "out")
  rows = []
  for style in ("baroque", "jazz"):
    for split in shards.SPLITS:
      rel = f"{split}/{style}_{split}.abc"
      _write(os.path.join(root, rel), _abc(rel, _STYLE_NOTES[style]))
      rows.append(f"{rel},{style}")
  manifest = _write(str(tmp_path / "labels.csv"), "path,label\n" + "\n".join(rows) + "\n")
  metadata = prepare_lib.prepare(root, out, num_workers=0, labels=manifest, progress=False)
  assert metadata["labels"]["names"] == ["baroque", "jazz"]
  assert _labels_by_split(out)["valid"] == [("valid/baroque_valid.abc", "baroque"),
                                            ("valid/jazz_valid.abc", "jazz")]

  # A file the manifest does not list: refused before the dataset is touched.
  _write(os.path.join(root, "train/extra.abc"), _abc("extra", "CDEF"))
  before = sorted(os.listdir(out))
  with pytest.raises(errors.UserError,
                     match=r"--labels=.*labels.csv: no label for .*train/extra.abc "
                           r"\(add the row train/extra.abc,LABEL\)"):
    prepare_lib.prepare(root, out, num_workers=0, labels=manifest, progress=False)
  assert sorted(os.listdir(out)) == before
  bad = _write(str(tmp_path / "bad.csv"), "train/a.abc,baroque\ntrain/b.abc\n")
  with pytest.raises(errors.UserError, match=r"bad.csv: line 2 is \['train/b.abc'\]"):
    labels.read_manifest(bad)
  with pytest.raises(errors.MissingInputError, match=r"--labels=.*nope.csv: no such"):
    labels.Labeler(str(tmp_path / "nope.csv"))
  with pytest.raises(errors.UserError, match=r"--labels='genre': use one of folder, "
                                             r"composer, FILE.csv"):
    labels.Labeler("genre")


def test_composer_labels_skip_pieces_without_one(tmp_path, capfd):
  root, out = str(tmp_path / "in"), str(tmp_path / "out")
  for composer in ("Bach", "Handel"):
    for split in shards.SPLITS:
      rel = f"{split}/{composer}.abc"
      _write(os.path.join(root, rel), _abc(rel, "CDEF", composer=composer))
  _write(os.path.join(root, "train/anonymous.abc"), _abc("anon", "CDEF"))
  metadata = prepare_lib.prepare(root, out, num_workers=0, labels="composer",
                                 progress=False)
  assert metadata["labels"]["counts"]["train"] == {"Bach": 1, "Handel": 1}
  assert metadata["skipped"] == 1
  assert "train/anonymous.abc" in capfd.readouterr().err


def test_a_style_missing_from_a_split_is_an_error_and_no_dataset(tmp_path):
  root, out = str(tmp_path / "in"), str(tmp_path / "out")
  _style_folders(root, style_above_split=True)
  os.remove(os.path.join(root, "folk/test/folk_test.abc"))
  with pytest.raises(errors.UserError,
                     match=r"--labels=folder: style\(s\) 'folk' have no piece in the "
                           r"test split"):
    prepare_lib.prepare(root, out, num_workers=0, labels="folder", progress=False)
  assert not os.path.exists(os.path.join(out, shards.METADATA_FILE))


def test_folder_labels_need_a_style_folder_and_a_folder_input(tmp_path):
  root = str(tmp_path / "in")
  _write(os.path.join(root, "train/loose.abc"), _abc("loose", "CDEF"))
  with pytest.raises(errors.UserError, match=r"train/loose.abc is in no style folder"):
    prepare_lib.prepare(root, str(tmp_path / "out"), num_workers=0, labels="folder",
                        progress=False)
  with pytest.raises(errors.UserError, match=r"--labels=folder: labels need --input "
                                             r"to be a folder"):
    prepare_lib.prepare("jsb", str(tmp_path / "out"), labels="folder", progress=False)
  assert labels.folder_label("Train/Val/baroque/x.mid") == "baroque"
  assert labels.folder_label("x.mid") is None


def test_music21_corpus_labelled_by_collection(tmp_path):
  out = str(tmp_path / "out")
  # A hash split with large held-out shares, so that 6 files per collection
  # put each collection into every split.
  metadata = prepare_lib.prepare("music21:bach,trecento", out, num_workers=0,
                                 max_per_label=6, valid_fraction=0.3,
                                 test_fraction=0.3, progress=False)
  assert metadata["labels"]["names"] == ["bach", "trecento"]
  counts = metadata["labels"]["counts"]
  assert sum(sum(c.values()) for c in counts.values()) == 12 - metadata["skipped"]
  for split, pieces in _labels_by_split(out).items():
    assert pieces and all(name.startswith(f"{label}/") for name, label in pieces)
    assert {label for _, label in pieces} == {"bach", "trecento"}, split
  with pytest.raises(errors.UserError, match=r"no collection 'bachh' with music; "
                                             r"known: .*bach, .*palestrina"):
    corpora.collection_names("music21:bachh")
  with pytest.raises(errors.UserError, match=r"labelled by collection"):
    prepare_lib.prepare("music21:bach", out, labels="folder", progress=False)
