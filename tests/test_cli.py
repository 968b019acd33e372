"""The command line as a new user meets it: --help, and one line per mistake.

Every case runs the real entry point in a subprocess (8 forced CPU devices,
inherited from conftest) and asserts that a mistake ends with exit status 2,
one `error:` line on stderr that names the flag or key, no traceback, and
nothing written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

LSTM = f"--config={REPO_ROOT}/configs/lstm.py:smoke"


def _run(tmp_path, *args, timeout=180):
  return subprocess.run([sys.executable, "-m", *args], cwd=str(tmp_path),
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A text file, a file that claims to be MIDI, and a damaged bundle."""
  root = tmp_path_factory.mktemp("inputs")
  (root / "notes.txt").write_text("not music\n")
  (root / "fake.mid").write_text("not a MIDI file\n")
  (root / "damaged").mkdir()
  (root / "damaged" / "bundle.json").write_text("{")
  return root


# (command after `python -m`, what stderr must name). {in} is the inputs folder.
CASES = {
    "batch_size not an int": (
        ["musegen_jax.main", LSTM, "--workdir=run", "--config.batch_size=abc"],
        "--config.batch_size=abc"),
    "batch_size zero": (
        ["musegen_jax.main", LSTM, "--workdir=run", "--config.batch_size=0"],
        "config.batch_size=0"),
    "batch_size not divisible by the devices": (
        ["musegen_jax.main", LSTM, "--workdir=run", "--config.batch_size=12"],
        "config.batch_size=12"),
    "unknown config key": (
        ["musegen_jax.main", LSTM, "--workdir=run", "--config.batchsize=4"],
        "batchsize"),
    "unknown model": (
        ["musegen_jax.main", LSTM, "--workdir=run", "--config.model.name=lstn"],
        "config.model.name='lstn'"),
    "data dir that is no dataset": (
        ["musegen_jax.main", LSTM, "--workdir=run", "--config.data.dir={in}"],
        "config.data.dir={in}"),
    "config variant": (
        ["musegen_jax.main", f"{LSTM[:-len(':smoke')]}:tiny", "--workdir=run"],
        "Unknown config variant 'tiny'"),
    "workdir is a file": (
        ["musegen_jax.main", LSTM, "--workdir={in}/notes.txt"],
        "--workdir={in}/notes.txt"),
    "sample: no bundle": (
        ["musegen_jax.sample", "--export={in}/none", "--output_dir=out"],
        "--export={in}/none"),
    "sample: damaged bundle": (
        ["musegen_jax.sample", "--export={in}/damaged", "--output_dir=out"],
        "--export={in}/damaged"),
    "sample: temperature": (
        ["musegen_jax.sample", "--export={in}/damaged", "--output_dir=out",
         "--temperature=-1"], "--temperature=-1"),
    "sample: primer missing": (
        ["musegen_jax.sample", "--export={in}/damaged", "--output_dir=out",
         "--primer={in}/none.mid"], "--primer={in}/none.mid"),
    "sample: primer not MIDI": (
        ["musegen_jax.sample", "--export={in}/damaged", "--output_dir=out",
         "--primer={in}/fake.mid"], "--primer={in}/fake.mid"),
    "prepare: input not music": (
        ["musegen_jax.prepare", "--input={in}/notes.txt", "--output=out"],
        "--input={in}/notes.txt"),
    "export: no workdir": (
        ["musegen_jax.export", "--workdir={in}", "--output=out"], "--workdir={in}"),
    "evaluate: split": (
        ["musegen_jax.evaluate", "--export={in}/damaged", "--split=tset"],
        "--split=tset"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_naming_the_key(case, inputs, tmp_path):
  args, named = CASES[case]
  args = [a.replace("{in}", str(inputs)) for a in args]
  before = sorted(os.listdir(inputs))
  result = _run(tmp_path, *args)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert named.replace("{in}", str(inputs)) in lines[0], lines[0]
  # Nothing written: no workdir, output or dataset, the inputs unchanged.
  assert os.listdir(tmp_path) == [] and sorted(os.listdir(inputs)) == before


COMMANDS = {"musegen-train": "--workdir", "musegen-prepare": "--input",
            "musegen-export": "--checkpoint", "musegen-sample": "--[no]render_audio",
            "musegen-evaluate": "--split", "musegen-bench": "--bench",
            "musegen-aot": "--topology"}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_console_script_help_lists_its_own_flags(command, tmp_path):
  path = shutil.which(command) or os.path.join(os.path.dirname(sys.executable), command)
  assert os.path.exists(path), f"{command} is not installed (pip install -e .)"
  result = subprocess.run([path, "--help"], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert f"  {COMMANDS[command]}" in result.stdout, result.stdout
  assert "--verbosity" in result.stdout and result.stderr == ""
  # Only the command's own flags, not absl's or JAX's (--helpfull has those).
  assert "--jax_" not in result.stdout and "--logtostderr" not in result.stdout
