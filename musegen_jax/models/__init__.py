"""Pure Flax linen model families, one file each."""
