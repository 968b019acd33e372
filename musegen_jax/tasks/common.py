"""The former home of what the tasks share, kept so older imports resolve.

Each name lives with its concern now; import it from there:

- `tasks.state`: TrainState (with the parameter average), create_train_state,
  eval_params, init_params, run_initializer, initializer_compiler_options,
  inside_a_trace, unbox, keep_if_finite, apply_finite_update;
- `tasks.optim`: create_learning_rate_fn, create_optimizer;
- `tasks.steps`: micro_batches, accumulate, summed_loss_gradients;
- `tasks.checks`: check_model_name, check_ranges, check_optimizer_ranges;
- `tasks.samples`: write_token_step_samples, slerp.
"""

from __future__ import annotations

from musegen_jax.tasks.checks import check_model_name
from musegen_jax.tasks.checks import check_optimizer_ranges
from musegen_jax.tasks.checks import check_ranges
from musegen_jax.tasks.optim import create_learning_rate_fn
from musegen_jax.tasks.optim import create_optimizer
from musegen_jax.tasks.samples import slerp
from musegen_jax.tasks.samples import write_token_step_samples
from musegen_jax.tasks.state import TrainState
from musegen_jax.tasks.state import apply_finite_update
from musegen_jax.tasks.state import create_train_state
from musegen_jax.tasks.state import eval_params
from musegen_jax.tasks.state import init_params
from musegen_jax.tasks.state import initializer_compiler_options
from musegen_jax.tasks.state import inside_a_trace
from musegen_jax.tasks.state import keep_if_finite
from musegen_jax.tasks.state import run_initializer
from musegen_jax.tasks.state import unbox
from musegen_jax.tasks.steps import accumulate
from musegen_jax.tasks.steps import micro_batches
from musegen_jax.tasks.steps import summed_loss_gradients

__all__ = ["TrainState", "accumulate", "apply_finite_update", "check_model_name",
           "check_optimizer_ranges", "check_ranges", "create_learning_rate_fn",
           "create_optimizer", "create_train_state", "eval_params", "init_params",
           "initializer_compiler_options", "inside_a_trace", "keep_if_finite",
           "micro_batches", "run_initializer", "slerp", "summed_loss_gradients",
           "unbox", "write_token_step_samples"]
