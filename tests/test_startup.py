"""Process start: the metric writer without PyTorch, note_seq without its
plotting libraries, and what the writer writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap


def test_writer_logs_scalars_and_images_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it can (3-4 s per start of a run). A
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
  musegen_jax defers both until they are used (a placeholder module that
  imports the real one on first attribute access), and leaves any later
  import of them to the ordinary machinery."""
  script = textwrap.dedent("""
      import sys
      import musegen_jax
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
