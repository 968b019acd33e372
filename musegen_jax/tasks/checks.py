"""Config checks the tasks share: value ranges, the optimizer's keys and the
model a task trains, each raising ValueError naming the key and its value;
and `style_index`, which checks a `--style` flag (errors.UserError)."""

from __future__ import annotations

from typing import Any, Iterable

from ml_collections import config_dict

from musegen_jax import errors


def check_model_name(config: config_dict.ConfigDict, allowed: Iterable[str]) -> None:
  """Raises ValueError unless config.model.name is one of `allowed`."""
  if config.model.name not in allowed:
    raise ValueError(f"config.model.name={config.model.name!r}; the "
                     f"{config.task} task trains one of: {', '.join(allowed)}")


def check_ranges(positive: dict[str, Any] | None = None,
                 non_negative: dict[str, Any] | None = None,
                 fractions: dict[str, Any] | None = None) -> None:
  """Raises ValueError naming the first config key out of its range.

  Args:
    positive: {"dotted.key": value} that must be > 0.
    non_negative: {"dotted.key": value} that must be >= 0.
    fractions: {"dotted.key": value} that must be in [0, 1) (rates, decays).
  """
  for key, value in (positive or {}).items():
    if not value > 0:
      raise ValueError(f"config.{key}={value!r} must be > 0")
  for key, value in (non_negative or {}).items():
    if not value >= 0:
      raise ValueError(f"config.{key}={value!r} must be >= 0")
  for key, value in (fractions or {}).items():
    if not 0 <= value < 1:
      raise ValueError(f"config.{key}={value!r} must be in [0, 1)")


def check_optimizer_ranges(config: Any) -> None:
  """The optimizer keys every task shares: learning_rate > 0, the schedule,
  decay and clipping keys the config has >= 0, Adam's betas in [0, 1), and
  grad_accum_steps >= 1."""
  check_ranges(
      positive={"learning_rate": config.learning_rate},
      non_negative={key: config[key] for key in
                    ("warmup_steps", "weight_decay", "grad_clip_norm")
                    if key in config},
      fractions={key: config[key] for key in ("adam_b1", "adam_b2")
                 if key in config})
  if config.grad_accum_steps < 1:
    raise ValueError(f"config.grad_accum_steps={config.grad_accum_steps} must be >= 1")


def style_index(styles: list[str], style: str, model: str = "model") -> int:
  """The index of `style` among a style-conditioned model's `styles`.

  Raises:
    errors.UserError: the model is not conditioned (no styles), or does not
      know `style` (the message lists the styles it knows); `model` names
      it ("model", "VAE").
  """
  if not styles:
    raise errors.UserError(f"--style={style}: this {model} is not style-conditioned "
                           "(trained without config.condition.enabled).")
  if style not in styles:
    raise errors.UserError(f"--style={style!r}: unknown; this {model} knows "
                           f"{', '.join(styles)}.")
  return styles.index(style)
