"""musegen_jax: a JAX/Flax training framework for music generation."""

__version__ = "0.1.0"
