r"""Style classifier: which of a labelled corpus's styles a piece is in.

    python -m musegen_jax.prepare --input=music21:bach,palestrina,monteverdi,ryansMammoth,trecento \
        --max_per_label=120 --output=data/styles
    python -m musegen_jax.main --config=configs/style_classifier.py --workdir=runs/styles \
        --config.data.dir=data/styles
    python -m musegen_jax.main --config=configs/style_classifier.py:smoke --workdir=runs/styles_smoke \
        --config.data.dir=data/styles

A small 1-D convolutional encoder (musegen_jax/models/classifier.py) over
windows of 64 sixteenth-note piano-roll frames (4 bars of 4/4), trained on
random windows of the train pieces transposed by up to 5 semitones; a piece
is classified by summing the log-probabilities of up to 16 windows spread
over it (`tasks/classify.py`). The styles are the dataset's labels
(metadata.json), filled into config.styles when the run starts.
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"Unknown config variant {arg!r}; known: 'smoke'.")
  config = config_defaults.default_config("classify")
  config_defaults.add_schedule(config)
  config.batch_size = 64
  config.num_train_steps = 3_000
  config.learning_rate = 1e-3
  config.warmup_steps = 100
  config.weight_decay = 0.05
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 500
  config.sample_every_steps = 0  # A classifier has no samples.
  # The class names, in id order: the dataset's style labels, filled in from
  # its metadata.json when empty.
  config.styles = ()

  config.model = config_dict.ConfigDict()
  config.model.name = "conv_classifier"  # musegen_jax/models/classifier.py
  # Channels of each block (convolution, layer norm, GELU, pool by 2).
  config.model.features = (64, 128, 256)
  config.model.kernel_size = 5
  config.model.dropout_rate = 0.3
  config.model.dtype = "float32"

  config.data = config_dict.ConfigDict()
  # A labelled dataset from `python -m musegen_jax.prepare --labels=...` or
  # `--input=music21:...` (required: the bundled chorales are one style).
  config.data.dir = ""
  config.data.representation = "pianoroll"
  config.data.pianoroll = config_dict.ConfigDict(dict(
      steps_per_quarter=4, min_pitch=21, num_pitches=88))
  # Frames per window: 64 sixteenths are 4 bars of 4/4.
  config.data.window = 64
  # Training: each piece is min(ceil(frames / window), this) entries of an
  # epoch. Evaluation: a piece is scored on at most this many windows.
  config.data.max_windows_per_piece = 16
  config.data.eval_windows_per_piece = 16
  # Random transposition of training windows, up to this many semitones.
  config.data.transpose = 5
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 8
  config.data.bad_records = "error"

  if arg == "smoke":
    config.model.features = (16, 32)
    config.data.window = 32
    config.data.eval_windows_per_piece = 4
    config.batch_size = 16
    config.num_train_steps = 60
    config.warmup_steps = 5
    config.log_every_steps = 10
    config.eval_every_steps = 30
    config.checkpoint_every_steps = 30
    config.num_eval_batches = -1
  return config
