"""`config.model.remat`: the same function and gradients, recomputed in the
backward pass instead of stored (the LSTM's layers, the Transformer's blocks)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musegen_jax import models

from conftest import load_config

# A few steps at tiny shapes each: compile time dominates.
pytestmark = pytest.mark.usefixtures("fewer_optimizations")


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides", [
    ("lstm", dict(model__embed_dim=16, model__hidden_size=32)),
    ("transformer", dict(model__d_model=32, model__num_heads=4, model__mlp_dim=64)),
])
def test_remat_gives_the_same_loss_and_gradients(name, overrides):
  config = load_config(name, model__dropout_rate=0.0, **overrides)
  plain = models.create_model(config.model, 64)
  config.model.remat = True
  remat = models.create_model(config.model, 64)
  assert remat.remat and not plain.remat
  # Enough tokens that the LSTM takes its training path (table projection).
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 33), 0, 64)
  params = nn.unbox(plain.init(jax.random.PRNGKey(1), tokens[:, :-1])["params"])

  def loss(model, params):
    logits, _ = model.apply({"params": params}, tokens[:, :-1], train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         tokens[:, 1:, None], -1))

  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  value_r, grads_r = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  np.testing.assert_allclose(value_r, value, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The layers really are wrapped: jax's remat primitive (remat2) is in
  # the traced function, once per layer, and absent without remat.
  traced = lambda model: str(jax.make_jaxpr(lambda p: loss(model, p))(params))
  assert traced(remat).count("remat2[") == config.model.num_layers
  assert "remat2[" not in traced(plain)
