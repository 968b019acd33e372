"""Data: file conversion, representations, shards and the grain pipeline."""
