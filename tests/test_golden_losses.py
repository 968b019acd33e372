"""The first training steps of every task give the losses recorded before the
redesign of issue 26 (kernels apart from models, one home for pmap, a typed
task base), under jit and under pmap.

The figures in `golden_losses.json` were written by this module on the code
before the move:

    MUSEGEN_RECORD_GOLDEN=1 python -m pytest tests/test_golden_losses.py

A change that alters what a step computes (an initializer, a dropout mask, a
reduction over devices, a loss) shows here as a different loss; moving code
around does not. The tolerance allows for float summation order only.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from musegen_jax import parallel
from musegen_jax.parallel import pmap
from musegen_jax import tasks
from musegen_jax import train

from conftest import load_config

pytestmark = pytest.mark.usefixtures("fewer_optimizations")

GOLDEN = os.path.join(os.path.dirname(__file__), "golden_losses.json")
RECORD = bool(os.environ.get("MUSEGEN_RECORD_GOLDEN"))
STEPS = 3
# (config, parallelism): every task and model family under jit, and one
# single-network task and the GAN under pmap.
CASES = [("lstm", "jit"), ("transformer", "jit"), ("bigru", "jit"),
         ("vae", "jit"), ("gan", "jit"), ("jsb_lstm", "jit"),
         ("jsb_transformer", "jit"), ("lstm", "pmap"), ("vae", "pmap"),
         ("gan", "pmap")]


# Relative tolerance per config: float summation order only. The GAN's
# generator step runs STFTs and the moment term's eigendecompositions, and by
# step 3 two Adam updates have amplified their rounding: on an AMD EPYC VM its
# jit g_grad_norm at step 3 came out 5.7e-4 from the figure recorded on an
# earlier VM (g_loss 1.3e-4; every other figure, and all of pmap's, within
# 1e-5), so the GAN gets 1e-3. A changed computation moves these figures by
# far more.
RTOL = {"gan": 1e-3}


def first_step_metrics(config, steps: int = STEPS) -> list[dict[str, float]]:
  """The scalar metrics of the first `steps` training steps of `config`, as
  the loop (train._train) builds and runs them."""
  data_dir = train.resolve_data_dir(config)
  task = tasks.create_task(config, train.load_representation(config, data_dir))
  data_dir = task.prepare_data(data_dir)
  mesh = train.create_mesh(config)
  init_rng, step_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  state = train.create_train_state(task, config, mesh, init_rng)
  if config.parallelism == "pmap":
    train_step = pmap.train_step(task)
    state = parallel.replicate(state)
    place = parallel.device_batch
  else:
    train_step, _ = train.jit_steps(task, mesh)
    place = lambda batch: parallel.global_batch(batch, mesh)
  batches = iter(task.create_train_dataset(data_dir))
  rows = []
  for _ in range(steps):
    batch = next(batches)
    batch.pop("bad_records", None)
    state, metrics = train_step(state, place(batch), step_rng)
    if config.parallelism == "pmap":
      metrics = parallel.unreplicate(metrics)
    rows.append({k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()})
  return rows


def _recorded() -> dict:
  if not os.path.exists(GOLDEN):
    return {}
  with open(GOLDEN, encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("name,parallelism", CASES)
def test_first_steps_give_the_recorded_losses(name, parallelism):
  config = load_config(name, parallelism=parallelism, data__num_workers=0)
  rows = first_step_metrics(config)
  key = f"{name}:smoke/{parallelism}"
  if RECORD:
    recorded = _recorded()
    recorded[key] = rows
    with open(GOLDEN, "w", encoding="utf-8") as f:
      json.dump(recorded, f, indent=1, sort_keys=True)
      f.write("\n")
  expected = _recorded()[key]
  assert len(rows) == len(expected) == STEPS
  for step, (got, want) in enumerate(zip(rows, expected), 1):
    assert sorted(got) == sorted(want), f"step {step}: metric names changed"
    for metric, value in want.items():
      np.testing.assert_allclose(got[metric], value, rtol=RTOL.get(name, 1e-4), atol=1e-5,
                                 err_msg=f"{key} step {step} {metric}")
  losses = [r.get("loss", r.get("d_loss")) for r in rows]
  assert all(np.isfinite(losses)), losses
