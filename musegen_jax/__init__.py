"""musegen_jax: a JAX/Flax training framework for music generation."""

import warnings

# note_seq imports pydub, which warns that ffmpeg is missing and that audioop
# is deprecated; musegen_jax uses neither, so the warnings only confuse users.
warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
warnings.filterwarnings("ignore", message="'audioop' is deprecated", category=DeprecationWarning)

__version__ = "0.1.0"
