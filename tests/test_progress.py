"""The progress bar counts finished steps and warns once of a run over a day."""

from __future__ import annotations


from musegen_jax import progress


def test_long_run_message_names_the_estimate_and_the_smoke_variant():
  # configs/gan.py on a 2-core CPU: about 47 s a step, 100,000 steps.
  message = progress.long_run_message(47.0, 100_000, "1 cpu device(s)",
                                      "configs/gan.py")
  assert "47 s/step on 1 cpu device(s)" in message
  assert "about 54 days" in message
  assert "--config=configs/gan.py:smoke" in message
  assert message.endswith("Training goes on.")
  # A smoke run, or any run shorter than a day, says nothing.
  assert progress.long_run_message(0.1, 120, "1 cpu device(s)", "configs/gan.py:smoke") is None
  assert progress.long_run_message(0.8, 100_000, "8 tpu device(s)", "configs/gan.py") is None
  # A long :smoke run (more steps asked for) gets no smoke hint.
  long_smoke = progress.long_run_message(10.0, 100_000, "cpu", "configs/gan.py:smoke")
  assert "about 12 days" in long_smoke and ":smoke trains" not in long_smoke


def test_bar_counts_finished_steps_and_warns_once(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
  lines = []
  bar = progress.Progress(total=100_000, initial=10, enabled=True,
                          device="1 cpu device(s)", config_file="configs/gan.py")
  monkeypatch.setattr(bar, "write", lines.append)
  bar.finished(11)  # The first finished step starts the clock (compile left out).
  for step in range(12, 40):
    clock[0] += 47.0
    bar.finished(step)
    bar.finished(step - 1)  # An older step reported again changes nothing.
  assert bar.finished_step == 39 and bar._bar.n == 39  # pylint: disable=protected-access
  assert len(lines) == 1 and "about 54 days" in lines[0]
  bar.close()
