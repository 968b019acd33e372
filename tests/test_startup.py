"""Process start: `import musegen_jax` sets nothing up, `runtime.setup()`
does (once), the metric writer without PyTorch, note_seq without its
plotting libraries, and what the writer writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def test_writer_logs_scalars_and_images_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it can (seconds per start of a run). A
  stand-in `torch` package on the path records whether it is imported: the
  writer keeps it out, and a later `import torch` of the program still
  finds it."""
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  marker = tmp_path / "torch_imported"
  (fake / "__init__.py").write_text(
      f"open({str(marker)!r}, 'a').write('x')\nTensor = type('Tensor', (), {{}})\n")
  workdir = tmp_path / "run"
  script = textwrap.dedent(f"""
      import os, sys
      import numpy as np
      from musegen_jax import metrics
      writer = metrics.MetricWriter({str(workdir)!r})
      writer.write_steps("train", [(1, {{"loss": 2.5}}), (2, {{"loss": 2.0}})])
      writer.write_scalars(2, {{"loss": 2.0}}, prefix="train")
      writer.write_image(2, "roll", np.zeros((4, 5, 3), np.uint8))
      writer.close()
      assert "torch" not in sys.modules
      assert not os.path.exists({str(marker)!r})
      import torch  # The program's own import is untouched.
      assert os.path.exists({str(marker)!r})
      """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path / "site")] + sys.path))
  subprocess.run([sys.executable, "-c", script], check=True, env=env,
                 timeout=120)
  with open(workdir / "train_log.jsonl", encoding="utf-8") as f:
    assert [json.loads(line) for line in f] == [
        {"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 2.0}]
  (events,) = os.listdir(workdir / "tensorboard")
  data = (workdir / "tensorboard" / events).read_bytes()
  assert b"train/loss" in data and b"roll" in data


def test_note_seq_imports_without_its_plotting_libraries():
  """note_seq's notebook helpers import bokeh and pandas at module level;
  after `runtime.setup()` both are deferred until they are used (a
  placeholder module that imports the real one on first attribute access),
  and any later import of them is left to the ordinary machinery."""
  script = textwrap.dedent("""
      import sys
      from musegen_jax import runtime
      runtime.setup()
      from musegen_jax import train
      from musegen_jax.data import pipeline
      from musegen_jax.tasks import lm, pianoroll, vae
      import note_seq
      assert not any(m == "pandas" or m.startswith(("pandas.", "bokeh"))
                     for m in sys.modules), sorted(sys.modules)
      helpers = note_seq.notebook_utils
      # The helpers' libraries load at first use, real ones.
      assert helpers.pd.DataFrame({"pitch": [60]}).shape == (1, 1)
      figure = helpers.bokeh.plotting.figure
      import bokeh.plotting, bokeh.models, pandas
      assert figure is bokeh.plotting.figure
      assert helpers.bokeh.models.HoverTool is bokeh.models.HoverTool
      assert type(pandas).__name__ == "module" and pandas.DataFrame
      """)
  subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_importing_the_package_sets_nothing_up():
  """`import musegen_jax` and its library modules add no import hook of
  their own (other libraries may add theirs), change no environment
  variable and adds none of its warning filters; the commands opt in."""
  script = textwrap.dedent("""
      import os, sys, warnings
      env = dict(os.environ)
      import musegen_jax
      from musegen_jax import train
      from musegen_jax.data import pipeline
      ours = [f for f in sys.meta_path
              if type(f).__module__.startswith("musegen_jax")]
      assert not ours, ours
      assert dict(os.environ) == env
      assert not [f for f in warnings.filters
                  if f[1] is not None and "ffmpeg" in f[1].pattern]
      import note_seq  # Without the set-up: the real plotting libraries.
      assert "pandas" in sys.modules
      """)
  subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_runtime_setup_does_each_part_once(tmp_path):
  """`setup()` adds one import hook and the warning filters, and with
  compile_cache=True points JAX's compilation cache into the cache root; a
  second call changes nothing and returns the same directory."""
  script = textwrap.dedent("""
      import sys, warnings
      import jax
      from musegen_jax import runtime
      def ours():
        return [f for f in sys.meta_path
                if type(f).__module__.startswith("musegen_jax")]
      assert not ours()
      assert jax.config.jax_compilation_cache_dir in (None, "")
      path = runtime.setup(compile_cache=True)
      hooks, filters = list(sys.meta_path), list(warnings.filters)
      assert len(ours()) == 1
      assert path == jax.config.jax_compilation_cache_dir, path
      print(path)
      assert runtime.setup(compile_cache=True) == path
      assert runtime.setup() == path
      assert sys.meta_path == hooks and warnings.filters == filters
      """)
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "MUSEGEN_JAX_COMPILE_CACHE")}
  env["MUSEGEN_JAX_CACHE"] = str(tmp_path / "cache")
  out = subprocess.run([sys.executable, "-c", script], check=True, env=env,
                       capture_output=True, text=True, timeout=120).stdout
  assert out.strip() == str(tmp_path / "cache" / "xla")
  assert os.path.isdir(tmp_path / "cache" / "xla")


def test_a_command_module_sets_up_only_when_run_as_the_command(tmp_path):
  """A command's module calls `runtime.setup_if_run_as_command(__name__)` at
  import: nothing when a program imports it, the set-up in a worker process
  that the program spawns (which imports the program's modules again)."""
  script = tmp_path / "program.py"
  script.write_text(textwrap.dedent("""
      import multiprocessing, sys
      from musegen_jax import main, prepare

      def ours():
        return [type(f).__name__ for f in sys.meta_path
                if type(f).__module__.startswith("musegen_jax")]

      if __name__ == "__main__":
        assert not ours()
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
          assert pool.apply(ours) == ["_Finder"]
        assert not ours()
      """))
  subprocess.run([sys.executable, str(script)], check=True, timeout=120,
                 cwd=str(tmp_path))
