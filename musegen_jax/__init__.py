"""musegen_jax: a JAX/Flax training framework for music generation."""

import warnings

# note_seq imports pydub, which warns that ffmpeg is missing and that audioop
# is deprecated; musegen_jax uses neither, so the warnings only confuse users.
warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
warnings.filterwarnings("ignore", message="'audioop' is deprecated", category=DeprecationWarning)

# note_seq's notebook helpers import bokeh and pandas, which musegen_jax never
# uses: defer them (2-3 s of every process start; _deferred_imports.py).
from musegen_jax import _deferred_imports  # pylint: disable=g-import-not-at-top

_deferred_imports.install()

__version__ = "0.1.0"
