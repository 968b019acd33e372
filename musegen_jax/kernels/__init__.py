"""Hand-written kernels the models call by name, one module per concern.

- `matmul`: low-precision matmuls (bfloat16 operands, float32 sums) with a
  hand-written backward pass, and the row-major transposes they need.
- `recurrence`: the LSTM and GRU recurrences with hand-written backward
  passes (`jax.custom_vjp`).
- `attention`: causal self-attention, blocked over queries with a
  hand-written backward pass, or the platform's fused kernel.
- `conv`: 'SAME' strided and transposed 1-D convolutions as block
  correlations (one GEMM each, custom backward pass), or `lax`'s.
- `dropout`: inverted dropout with hashed random words.

The rule each module follows: it holds the fast implementation, a plain
reference implementation of the same function (autodiff for the gradients,
or NumPy), which tests/test_kernels.py compares it with, outputs and
gradients, and, where the fast path depends on the platform or a config
value, one chooser that picks by that config value and
`musegen_jax.backend.platform()`: `attention.self_attention` by
`model.attention_impl`, `conv.conv1d` and `conv.conv_transpose1d` by
`model.conv_impl`, `matmul.project` by `model.matmul_dtype`. A kernel with
one implementation everywhere (the recurrences, the dropout) is called
directly. Kernels ask `backend.platform()`, never `jax.default_backend()`:
the two differ when a CPU host compiles for TPU chips (`musegen_jax.aot`).

Models (`musegen_jax.models`) hold the Flax modules and their parameters
and import these functions; no model branches on the platform or defines a
custom VJP itself.
"""
