"""Tests for musegen_jax.models.wavegan: phase shuffle, G and D (the
convolutions' own tests are in tests/test_kernels.py)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musegen_jax import flops as flops_lib
from musegen_jax.models import wavegan

# A few steps at tiny shapes each: compile time dominates.
pytestmark = pytest.mark.usefixtures("fewer_optimizations")

IMPLS = ("matmul", "lax")


def _assert_close(actual, desired, rtol=1e-4):
  scale = float(jnp.max(jnp.abs(desired)))
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)


def _reflect_shift(row: np.ndarray, shift: int, n: int) -> np.ndarray:
  """out[t] = row[t - shift], with reflected (edge-excluded) padding."""
  padded = np.pad(row, ((n, n), (0, 0)), mode="reflect")
  return padded[n - shift:n - shift + row.shape[0]]


def test_phase_shuffle_shifts_with_reflection():
  n = 2
  rng = np.random.default_rng(3)
  x = rng.standard_normal((32, 10, 3)).astype(np.float32)
  out = np.asarray(wavegan.phase_shuffle(jnp.asarray(x), jax.random.key(0), n))
  assert out.shape == x.shape
  shifts = []
  for row, got in zip(x, out):
    matches = [s for s in range(-n, n + 1)
               if np.array_equal(got, _reflect_shift(row, s, n))]
    assert len(matches) == 1, "each row is one reflect-padded shift of its input"
    shifts.append(matches[0])
  # Per example, not one shift for the whole batch; all shifts occur.
  assert set(shifts) == set(range(-n, n + 1))
  # The edges are reflections: no zeros and no wrap-around.
  s2 = shifts.index(2)
  np.testing.assert_array_equal(out[s2, :2], x[s2, [2, 1]])
  sm2 = shifts.index(-2)
  np.testing.assert_array_equal(out[sm2, -2:], x[sm2, [-2, -3]])


def test_phase_shuffle_rng_determinism():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((16, 12, 2)),
                  jnp.float32)
  a = wavegan.phase_shuffle(x, jax.random.key(5), 2)
  b = wavegan.phase_shuffle(x, jax.random.key(5), 2)
  c = wavegan.phase_shuffle(x, jax.random.key(6), 2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(wavegan.phase_shuffle(x, jax.random.key(5), 0), x)


def test_generator_full_length_output():
  gen = wavegan.WaveGANGenerator(dim=4)
  z = jax.random.uniform(jax.random.key(0), (2, 100), minval=-1.0, maxval=1.0)
  out, variables = jax.jit(gen.init_with_output)(jax.random.key(1), z)
  assert out.shape == (2, 16384, 1)
  assert out.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(out))) <= 1.0
  assert float(jnp.std(out)) > 0.0
  assert not np.allclose(out[0], out[1])
  # Channels halve from 16 * dim; kernels [25, in, out].
  params = nn.unbox(variables["params"])  # Drops the logical axis names.
  assert params["z_project"]["kernel"].shape == (100, 16 * 16 * 4)
  assert [params[f"upconv_{i}"]["kernel"].shape for i in range(5)] == [
      (25, 64, 32), (25, 32, 16), (25, 16, 8), (25, 8, 4), (25, 4, 1)]


def test_discriminator_output_and_structure():
  disc = wavegan.WaveGANDiscriminator(dim=2)
  x = jax.random.uniform(jax.random.key(0), (3, 16384, 1), minval=-1, maxval=1)
  variables = jax.jit(disc.init)(jax.random.key(1), x)
  params = nn.unbox(variables["params"])
  assert [params[f"downconv_{i}"]["kernel"].shape for i in range(5)] == [
      (25, 1, 2), (25, 2, 4), (25, 4, 8), (25, 8, 16), (25, 16, 32)]
  assert params["output"]["kernel"].shape == (16 * 32, 1)

  @jax.jit
  def train_logits(rng):
    return disc.apply(variables, x, train=True, rngs={"phase_shuffle": rng})
  logits = train_logits(jax.random.key(2))
  assert logits.shape == (3,)
  assert logits.dtype == jnp.float32
  # Same rng, same logits; another rng shuffles differently.
  np.testing.assert_array_equal(logits, train_logits(jax.random.key(2)))
  assert not np.allclose(logits, train_logits(jax.random.key(3)))
  with pytest.raises(ValueError, match="8192"):
    disc.apply(variables, x[:, :8192], train=False)


def test_longer_slices_add_a_layer():
  z = jnp.ones((1, 100))
  for slice_len in (32768, 65536):
    gen = wavegan.WaveGANGenerator(slice_len=slice_len, dim=1)
    out, variables = jax.eval_shape(gen.init_with_output, jax.random.key(0), z)
    assert out.shape == (1, slice_len, 1)
    params = nn.unbox(variables["params"])
    # 32 * dim initial channels, six transposed convs.
    assert params["z_project"]["kernel"].shape == (100, 16 * 32)
    assert [params[f"upconv_{i}"]["kernel"].shape[1:] for i in range(6)] == [
        (32, 16), (16, 8), (8, 4), (4, 2), (2, 1), (1, 1)]
    disc = wavegan.WaveGANDiscriminator(slice_len=slice_len, dim=1)
    logits, d_vars = jax.eval_shape(disc.init_with_output, jax.random.key(0),
                                    jnp.zeros(out.shape))
    assert logits.shape == (1,)
    d_params = nn.unbox(d_vars["params"])
    assert d_params["downconv_5"]["kernel"].shape == (25, 16, 32)
    assert d_params["output"]["kernel"].shape == (16 * 32, 1)


@pytest.mark.parametrize("slice_len", [8192, 20000])
def test_unknown_slice_len_raises(slice_len):
  with pytest.raises(ValueError, match=f"{slice_len}.*16384.*32768.*65536"):
    jax.eval_shape(wavegan.WaveGANGenerator(slice_len=slice_len).init,
                   jax.random.key(0), jnp.zeros((1, 100)))
  with pytest.raises(ValueError, match=str(slice_len)):
    jax.eval_shape(wavegan.WaveGANDiscriminator(slice_len=slice_len).init,
                   jax.random.key(0), jnp.zeros((1, slice_len, 1)))


def test_unknown_conv_impl_raises():
  gen = wavegan.WaveGANGenerator(dim=1, conv_impl="winograd")
  with pytest.raises(ValueError, match="winograd"):
    jax.eval_shape(gen.init, jax.random.key(0), jnp.zeros((1, 100)))


def test_impls_agree_on_models():
  z = jax.random.normal(jax.random.key(0), (2, 100))
  gens = [wavegan.WaveGANGenerator(dim=1, conv_impl=i) for i in IMPLS]
  out0, variables = jax.jit(gens[0].init_with_output)(jax.random.key(1), z)
  out1 = jax.jit(gens[1].apply)(variables, z)
  _assert_close(out0, out1, rtol=1e-4)
  rngs = {"phase_shuffle": jax.random.key(3)}
  discs = [wavegan.WaveGANDiscriminator(dim=1, conv_impl=i) for i in IMPLS]
  d_vars = jax.jit(discs[0].init)(jax.random.key(2), out0)
  logits = [jax.jit(lambda v, x, d=d: d.apply(v, x, train=True, rngs=rngs))(
      d_vars, out0) for d in discs]
  _assert_close(logits[0], logits[1], rtol=1e-4)


def test_init_follows_tf_defaults():
  """Glorot-uniform kernels (within their bound), zero biases."""
  gen = wavegan.WaveGANGenerator(dim=1)
  params = nn.unbox(jax.jit(gen.init)(jax.random.key(0), jnp.zeros((1, 100)))["params"])
  for name, layer in params.items():
    kernel = np.asarray(layer["kernel"])
    receptive = int(np.prod(kernel.shape[:-2]))
    bound = np.sqrt(6.0 / (receptive * (kernel.shape[-2] + kernel.shape[-1])))
    assert np.max(np.abs(kernel)) <= bound, name
    assert np.max(np.abs(kernel)) > 0.5 * bound, name
    np.testing.assert_array_equal(layer["bias"], 0.0)


def test_batchnorm_variant_updates_batch_stats():
  z = jax.random.normal(jax.random.key(0), (4, 100))
  gen = wavegan.WaveGANGenerator(dim=1, use_batchnorm=True)
  variables = jax.jit(gen.init)(jax.random.key(1), z)
  assert set(variables) == {"params", "batch_stats"}

  @functools.partial(jax.jit, static_argnums=1)
  def gen_apply(variables, train):
    return gen.apply(variables, z, train=train, mutable=["batch_stats"])
  out, updates = gen_apply(variables, True)
  assert out.shape == (4, 16384, 1)
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(updates["batch_stats"])
  assert len(before) == 2 * 5  # mean and var before each of the 5 ReLUs
  assert all(not np.allclose(a, b) for a, b in zip(after, before))
  # Evaluation uses the running averages and changes nothing.
  _, same = gen_apply(variables, False)
  for a, b in zip(jax.tree.leaves(same["batch_stats"]), before):
    np.testing.assert_array_equal(a, b)

  disc = wavegan.WaveGANDiscriminator(dim=1, use_batchnorm=True)
  d_vars = jax.eval_shape(disc.init, jax.random.key(2), out)
  # Batch norm after every conv but the first, as in the original.
  assert sorted(d_vars["batch_stats"]) == ["bn_1", "bn_2", "bn_3", "bn_4"]


def test_bfloat16_compute_float32_params():
  gen = wavegan.WaveGANGenerator(dim=2, dtype=jnp.bfloat16)
  z = jax.random.normal(jax.random.key(0), (2, 100))
  out, variables = jax.jit(gen.init_with_output)(jax.random.key(1), z)
  assert out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  ref = jax.jit(wavegan.WaveGANGenerator(dim=2).apply)(variables, z)
  np.testing.assert_allclose(out, ref, atol=0.05)
  assert not np.array_equal(out, ref)  # Really computed in bfloat16.


def test_train_flops_counts():
  # dim 1, batch 1, by hand: length * K * cin * cout MACs per conv layer.
  gen_convs = 25 * (16 * 16 * 8 + 64 * 8 * 4 + 256 * 4 * 2 + 1024 * 2 * 1
                    + 4096 * 1 * 1)
  gen_dense = 100 * 256
  disc_convs = 25 * (4096 * 1 * 1 + 1024 * 1 * 2 + 256 * 2 * 4 + 64 * 4 * 8
                     + 16 * 8 * 16)
  disc_dense = 256
  g_fwd = 2 * (gen_convs + gen_dense)
  d_fwd = 2 * (disc_convs + disc_dense)
  assert flops_lib.wavegan_train_flops(1, 16384, 1, 0) == 3 * g_fwd + 3 * d_fwd
  assert flops_lib.wavegan_train_flops(1, 16384, 1, 5) == (
      5 * (g_fwd + 12 * d_fwd) + 3 * g_fwd + 3 * d_fwd)
  assert flops_lib.wavegan_train_flops(32, 16384, 16, 5) == (
      16 * flops_lib.wavegan_train_flops(32, 16384, 1, 5))
