"""What every command-line entry point shares: help, quiet logs, one-line errors.

`cli.run(main)` is `absl.app.run(main)` with three differences a user sees:

- `--help` (also `-h`, `-?`, `--helpshort`) prints the command's docstring
  and its own flags, and exits 0; `--helpfull` adds every library's flags.
- Only the project's own lines are shown: absl logging (orbax, grain and
  ours) at WARNING and above, unless `--verbosity` is given (0: INFO).
- A user's mistake ends in one line on stderr, `error: MESSAGE`, with exit
  status 2 and nothing written: a wrong flag value, an unknown flag or
  config key, or any `errors.UserError` the command raises. Every other
  exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

from absl import app
from absl import flags
from absl import logging

from musegen_jax import errors

USER_ERROR_EXIT = 2
_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
_HELPFULL = ("--helpfull", "-helpfull")


def fail(message: Any) -> NoReturn:
  """Ends the process with `error: MESSAGE` on one line (exit 2)."""
  text = " ".join(str(message).split())
  sys.stderr.write(f"error: {text}\n")
  sys.stderr.flush()
  sys.exit(USER_ERROR_EXIT)


def _flag_module(main: Callable[..., Any]) -> str:
  """The name absl files the command's own flags under (the module of `main`;
  under `python -m` that module is __main__, which absl names by argv[0])."""
  name = main.__module__
  return sys.argv[0] if name == "__main__" else name


def _help_text(module: str, doc: str | None, full: bool) -> str:
  parts = [(doc or "").strip() or f"USAGE: {sys.argv[0]} [flags]", ""]
  if full:
    parts.append(flags.FLAGS.get_help())
  else:
    own = flags.FLAGS.module_help(module).strip()
    parts.append(own or "This command has no flags of its own.")
    parts += ["", "  --verbosity: 0 shows the INFO logs of orbax, grain and "
              "JAX (default: only this command's own lines).",
              "", "Try --helpfull to see the flags of every library."]
  return "\n".join(parts) + "\n"


def parse_flags(argv: list[str], module: str, doc: str | None) -> list[str]:
  """absl's flag parsing, with `--help` on stdout (exit 0) and one-line errors."""
  for arg in argv[1:]:
    if arg == "--":
      break
    if arg in _HELP or arg in _HELPFULL:
      sys.stdout.write(_help_text(module, doc, full=arg in _HELPFULL))
      sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    fail(f"{_without_traceback(str(e))} (see --help)")
  except (AttributeError, KeyError) as e:  # An unknown key of a locked ConfigDict.
    cause: BaseException = e
    while cause.args and isinstance(cause.args[0], BaseException):
      cause = cause.args[0]
    detail = cause.args[0] if cause.args else cause
    fail(f"bad config override: unknown key {detail}")
  _check_config_files()
  return rest


def _without_traceback(text: str) -> str:
  """A message that embeds a traceback (ml_collections' config errors), cut
  to its head and the traceback's last line, the exception itself."""
  head, marker, tail = text.partition("Traceback (most recent call last)")
  if not marker:
    return text
  head = head.rstrip().rstrip(":")
  return f"{head}: {tail.strip().splitlines()[-1]}"


def _check_config_files() -> None:
  """ml_collections reports a config file it cannot load only when the config
  is first used; this tells it now, as one line."""
  for name, flag in flags.FLAGS.__flags.items():  # pylint: disable=protected-access
    # An optional config flag left out has no file (nor a config_filename).
    if not flag.present or not hasattr(flag, "config_filename"):
      continue
    try:
      getattr(flag.value, "keys", None)
    except OSError as e:
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      fail(f"--{name}={flag.config_filename}: cannot load the config file "
           f"({lines[-1]})")


def quiet_logs() -> None:
  """absl logging (which orbax and grain use) at WARNING unless --verbosity."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def run(main: Callable[[list[str]], Any], doc: str | None = None) -> None:
  """Runs `main(argv)` as a command: see the module docstring.

  Args:
    main: the command; its module's flags are its own (listed by --help).
    doc: the usage text --help prints first (default: main's module docstring).
  """
  if doc is None:
    doc = sys.modules[main.__module__].__doc__
  module = _flag_module(main)

  def command(argv: list[str]) -> Any:
    if len(argv) > 1:
      fail(f"unexpected arguments {argv[1:]}: flags are --name=value "
           "(see --help)")
    quiet_logs()
    try:
      return main(argv)
    except (errors.UserError, app.UsageError) as e:
      fail(e)

  app.run(command, flags_parser=lambda argv: parse_flags(argv, module, doc))
