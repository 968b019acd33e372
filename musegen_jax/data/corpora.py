"""Corpora that ship inside pip packages: music21's bundled corpus.

`prepare --input=music21:bach,palestrina,monteverdi,ryansMammoth,trecento`
reads the named collections of music21's corpus (`pip install -e
".[corpora]"`; nothing is downloaded) and labels each piece with its
collection. Roman-numeral analyses (.rntxt) are not music and are left out;
an ABC file holding several tunes gives one piece per tune. Each piece goes
through MIDI (music21 writes it, note_seq reads it), so it arrives as the
NoteSequence any MIDI file would give.
"""

from __future__ import annotations

import os

from musegen_jax import errors

PREFIX = "music21:"
# Notated formats music21's corpus holds; .rntxt (analyses) are skipped.
_MUSIC_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn", ".abc", ".mid", ".midi")
_INSTALL = 'pip install -e ".[corpora]" (or pip install music21)'


def is_music21_input(input_path: str) -> bool:
  return input_path.startswith(PREFIX)


def _music21():
  try:
    import music21  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.UserError(f"--input={PREFIX}...: music21 is not installed; "
                           f"{_INSTALL}.") from None
  return music21


def collection_names(input_path: str) -> list[str]:
  """The collections of `music21:a,b,c`, checked against music21's corpus.

  Raises:
    errors.UserError: music21 missing, no name, or an unknown name (the
      message lists the collections that have pieces).
  """
  names = [n.strip() for n in input_path[len(PREFIX):].split(",") if n.strip()]
  if not names:
    raise errors.UserError(f"--input={input_path}: name collections, e.g. "
                           f"{PREFIX}bach,palestrina,monteverdi,ryansMammoth,trecento.")
  for name in names:
    if not corpus_paths(name):
      known = sorted(n for n in _known_collections() if corpus_paths(n))
      raise errors.UserError(f"--input={input_path}: music21's corpus has no "
                             f"collection {name!r} with music; known: "
                             f"{', '.join(known)}.")
  return list(dict.fromkeys(names))


def _known_collections() -> list[str]:
  """The folder names of music21's core corpus."""
  root = str(_music21().common.getCorpusFilePath())
  return [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
          and not d.startswith(("_", "."))]


def corpus_paths(name: str) -> list[str]:
  """Absolute paths of the music files of collection `name`, sorted."""
  music21 = _music21()
  try:
    paths = music21.corpus.getComposer(name)
  except Exception:  # pylint: disable=broad-except
    return []
  return sorted(str(p) for p in paths if str(p).lower().endswith(_MUSIC_EXTENSIONS))


def relpath(name: str, path: str) -> str:
  """A piece file's name in reports and for the hash split:
  `<collection>/<path below the collection folder>`."""
  parts = os.path.normpath(path).split(os.sep)
  if name in parts:
    parts = parts[len(parts) - parts[::-1].index(name):]
  else:
    parts = parts[-1:]
  return "/".join([name] + parts)


def note_sequences(name: str, path: str):
  """The pieces of one corpus file as NoteSequences (one per ABC tune).

  Raises:
    Exception: music21 or note_seq could not read the file (the caller
      reports it and goes on).
  """
  music21 = _music21()
  import note_seq  # pylint: disable=import-outside-toplevel
  parsed = music21.converter.parse(path)
  scores = list(parsed.scores) if isinstance(parsed, music21.stream.Opus) else [parsed]
  base = relpath(name, path)
  sequences = []
  for i, score in enumerate(scores):
    midi = music21.midi.translate.streamToMidiFile(score).writestr()
    ns = note_seq.midi_to_note_sequence(midi)
    ns.id = base if len(scores) == 1 else f"{base}#{i}"
    ns.filename = base
    ns.collection_name = name
    if ns.notes:
      sequences.append(ns)
  return sequences
