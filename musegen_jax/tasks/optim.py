"""The optimizer every task shares: its learning-rate schedule and AdamW."""

from __future__ import annotations

import optax
from ml_collections import config_dict

from musegen_jax import warm_start


def create_learning_rate_fn(config: config_dict.ConfigDict) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine decay to the end factor."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(config.num_train_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * config.end_learning_rate_factor)


def create_optimizer(config: config_dict.ConfigDict) -> optax.GradientTransformation:
  """AdamW with global-norm gradient clipping on the shared schedule.

  With `config.freeze` (a regex over "/"-joined parameter paths, see
  `warm_start`), the parameters it matches get zero updates
  (`optax.set_to_zero`: no Adam step, no weight decay, no optimizer moments)
  and the clipping norm is that of the trained parameters' gradients. Without
  it the optimizer and its state are AdamW's alone, as checkpoints hold them.
  """
  adamw = optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(create_learning_rate_fn(config), b1=config.adam_b1,
                  b2=config.adam_b2, weight_decay=config.weight_decay))
  labels = warm_start.freeze_labels(config)
  if labels is None:
    return adamw
  return optax.multi_transform(
      {"trained": adamw, "frozen": optax.set_to_zero()}, labels)
