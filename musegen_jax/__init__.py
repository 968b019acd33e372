"""musegen_jax: a JAX/Flax training framework for music generation.

Importing the package changes nothing outside it; the command-line tools
opt in to their process set-up with `musegen_jax.runtime.setup()`.
"""

__version__ = "0.1.0"
