"""The mistakes a user can make, told apart from our own bugs.

A `UserError` is a wrong flag, config value or input file: the command-line
entry points (`cli.run`) print its message as one line and exit 2, with no
traceback. Anything else that escapes is a bug and keeps its traceback.

The subclasses are also the built-in exceptions callers of the library
catch (`ValueError`, `FileNotFoundError`, `FileExistsError`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class UserError(ValueError):
  """A flag, config value or input the user gave is wrong; the message says
  which, the value, and what is allowed."""


class MissingInputError(UserError, FileNotFoundError):
  """A file or folder the user named does not exist or is not what is needed."""


class ExistingOutputError(UserError, FileExistsError):
  """An output the user named already exists and would be overwritten."""


@contextlib.contextmanager
def user_input() -> Iterator[None]:
  """Re-raises a ValueError, TypeError or KeyError of the block as a UserError.

  For blocks that only check what the user gave (a config, flags): every
  failure there is the user's.
  """
  try:
    yield
  except UserError:
    raise
  except (ValueError, TypeError, KeyError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise UserError(str(message)) from e
