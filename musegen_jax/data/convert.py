"""Music files (MIDI, MusicXML, ABC) to NoteSequences.

Every failure, from a corrupt file to one that parses but holds no notes, raises a
`ConversionError` that names the file and the reason, so a corpus run can skip
the file, report it and go on.
"""

from __future__ import annotations

import os

import note_seq
from note_seq.protobuf import music_pb2

from musegen_jax import errors

NoteSequence = music_pb2.NoteSequence

MIDI_EXTENSIONS = (".mid", ".midi")
MUSICXML_EXTENSIONS = (".xml", ".mxl", ".musicxml")
ABC_EXTENSIONS = (".abc",)
SUPPORTED_EXTENSIONS = MIDI_EXTENSIONS + MUSICXML_EXTENSIONS + ABC_EXTENSIONS


class ConversionError(errors.UserError):
  """A file could not be turned into a NoteSequence with notes (a ValueError)."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


def is_supported(path: str) -> bool:
  """Whether the file's extension (any case) is one `file_to_note_sequences` reads."""
  return os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS


def _parse(path: str, problems: list[str] | None) -> list[NoteSequence]:
  ext = os.path.splitext(path)[1].lower()
  if ext in MIDI_EXTENSIONS:
    return [note_seq.midi_file_to_note_sequence(path)]
  if ext in MUSICXML_EXTENSIONS:
    return [note_seq.musicxml_file_to_sequence_proto(path)]
  if ext in ABC_EXTENSIONS:
    tunes, errors = note_seq.parse_abc_tunebook_file(path)
    if not tunes:
      reasons = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
      raise ConversionError(path, f"no ABC tune could be parsed ({reasons or 'no tunes'})")
    if problems is not None:
      problems.extend(f"ABC tune skipped: {type(e).__name__}: {e}" for e in errors)
    return [tunes[ref] for ref in sorted(tunes)]
  raise ConversionError(
      path, f"unsupported extension {ext!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}")


def file_to_note_sequences(path: str, root: str | None = None,
                           problems: list[str] | None = None) -> list[NoteSequence]:
  """Converts a music file to NoteSequences: one, or one per tune of an ABC book.

  Args:
    path: a .mid/.midi, .xml/.mxl/.musicxml or .abc file.
    root: `filename` and `id` are set to the path relative to this folder (with
      "/" separators); None keeps `path` as given.
    problems: if given, reasons for parts of the file that were dropped (ABC
      tunes that fail to parse, tunes without notes) are appended here.

  Returns:
    The sequences with notes, unquantized (seconds). An ABC book with several tunes
    gives ids `{relpath}#{reference_number}`.

  Raises:
    ConversionError: the file is missing, empty, corrupt, unsupported, or yields
      no sequence with notes.
  """
  name = (os.path.relpath(path, root) if root else path).replace(os.sep, "/")
  if not os.path.isfile(path):
    raise ConversionError(path, "no such file")
  if os.path.getsize(path) == 0:
    raise ConversionError(path, "empty file")
  try:
    sequences = _parse(path, problems)
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Parsers fail on bad input in many ways (struct, XML, unicode, index errors).
    raise ConversionError(path, f"{type(e).__name__}: {e}") from e
  result = []
  for ns in sequences:
    label = f"{name}#{ns.reference_number}" if len(sequences) > 1 else name
    if not ns.notes:
      if problems is not None and len(sequences) > 1:
        problems.append(f"{label}: no notes")
      continue
    ns.filename = name
    ns.id = label
    result.append(ns)
  if not result:
    raise ConversionError(path, "no notes")
  return result


def file_to_note_sequence(path: str, root: str | None = None) -> NoteSequence:
  """Converts a file holding one piece; see `file_to_note_sequences`.

  Raises:
    ConversionError: as `file_to_note_sequences`, or the file holds several tunes.
  """
  sequences = file_to_note_sequences(path, root)
  if len(sequences) != 1:
    raise ConversionError(
        path, f"holds {len(sequences)} tunes; use file_to_note_sequences")
  return sequences[0]
