r"""LSTM next-frame model of any polyphonic corpus (88-key frames).

    python -m musegen_jax.main --config=configs/poly_lstm.py --workdir=runs/nott \
        --config.data.dir=Nottingham.pickle
    python -m musegen_jax.main --config=configs/poly_lstm.py:smoke \
        --workdir=runs/poly_lstm_smoke --config.data.dir=data/nott

The `pianoroll` task (musegen_jax/tasks/pianoroll.py): next-frame Bernoulli
NLL in nats per frame. `--config.data.dir` names the pieces: a benchmark
file as distributed (`.pickle`: a dict train/valid/test of pieces of frames
of MIDI pitches; `.mat`: traindata/validdata/testdata cell arrays of
[frames, 88] 0/1 matrices), a corpus from `python -m musegen_jax.prepare`
(quantised to `data.steps_per_quarter` frames per quarter note), or ""
for the bundled quarter-note JSB Chorales (configs/jsb_lstm.py). Pieces
longer than `data.max_frames` are trained on as random windows of that
many frames and evaluated whole, window by window with the LSTM's state
carried across: the NLL per frame over every frame of the split.

The settings are those chosen on JSB Chorales valid (configs/jsb_lstm.py:
test NLL 8.430, published LSTM 8.45, Bai et al. 2018); choose models on
valid, then evaluate the best checkpoint on test after export:

    python -m musegen_jax.export --workdir=runs/nott --output=exports/nott \
        --checkpoint=best
    python -m musegen_jax.evaluate --export=exports/nott --split=test

`--config.data.frame_model=serial` models each frame as its keys in ascending
order, then an end-of-frame token (configs/poly_lstm_serial.py).
"""

from ml_collections import config_dict

from musegen_jax import config_defaults


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
  """Returns the default config; `arg="smoke"` gives a tiny CPU variant."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"Unknown config variant {arg!r}; known: 'smoke'.")
  # Shared keys (seed, batch, steps, Adam, logging, checkpoints, parallelism)
  # and the schedule: musegen_jax/config_defaults.py.
  config = config_defaults.default_config("pianoroll")
  config_defaults.add_schedule(config)

  config.model = config_dict.ConfigDict()
  config.model.name = "lstm"  # musegen_jax/models/<name>.py
  # Unused with multi-hot frames (the first layer reads the 88 keys directly),
  # but a field of the LSTM; the token embedding with serial frames.
  config.model.embed_dim = 88
  # 2 x 512: test NLL 8.430 (2 x 384: 8.483; 2 x 256: 8.592; BUILD_NOTES.md).
  config.model.hidden_size = 512
  config.model.num_layers = 2
  # Between the LSTM layers.
  config.model.dropout_rate = 0.5
  config.model.dtype = "float32"
  # "" follows model.dtype; "bfloat16" runs only the matmuls (input
  # projections, recurrent steps, head, their gradients) in bfloat16,
  # summed in float32; the gates and states stay in model.dtype.
  config.model.matmul_dtype = ""
  config.model.remat = False

  # Dropout on the model's input frames while training (targets stay whole);
  # serial: the fraction of input tokens replaced by a blank (word dropout).
  config.input_dropout_rate = 0.5

  # Distillation (Bernoulli frames): comma-separated export bundles of
  # Bernoulli piano-roll models, the teachers. Each training target becomes
  # distill_weight * the teachers' averaged key probabilities (given the
  # true history) + (1 - distill_weight) * the true frame. "" trains on the
  # frames alone. Evaluation always scores the true frames.
  config.distill_teachers = ""
  config.distill_weight = 0.5

  config.data = config_dict.ConfigDict()
  # The pieces (musegen_jax/data/poly_corpus.py): a .pickle or .mat benchmark
  # file, a prepared corpus folder, or "" for the bundled JSB Chorales.
  config.data.dir = ""
  # Frames per quarter note when data.dir is a prepared corpus (the frames
  # of .pickle/.mat files and of the bundled chorales are read as they are).
  config.data.steps_per_quarter = 1
  # > 0: frames of a prepared corpus are this fixed fraction of a second
  # instead (unquantised performances, e.g. Piano-midi.de as MIDI files).
  config.data.frames_per_second = 0.0
  # Recorded with exports (a roll decodes like the pianoroll representation).
  config.data.representation = "pianoroll"
  # How a frame is modelled given the history: "bernoulli" (88 independent
  # keys) or "serial" (its keys in ascending order, then an end-of-frame
  # token, one softmax each; configs/jsb_lstm_serial.py).
  config.data.frame_model = "bernoulli"
  # Bernoulli: the training window and the evaluation chunk, in frames; a
  # piece that fits is read whole, padded (JSB's longest has 160).
  config.data.max_frames = 160
  # Serial: the same in tokens, START and each frame's keys and EOF (JSB's
  # longest, in test, has 788).
  config.data.max_tokens = 788
  # Training pieces are shifted by a random number of semitones in
  # [-transpose, transpose] (kept on the 88 keys); 0: never. Evaluation
  # always reads the pieces as written.
  config.data.transpose = 0
  # grain worker processes for the training pipeline (0: in the main process).
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 8
  # Unused by this task (a corpus's shards are read whole); checked by the loop.
  config.data.bad_records = "error"

  config.batch_size = 16  # Pieces.
  config.num_train_steps = 3_000
  config.learning_rate = 3e-3
  config.warmup_steps = 100
  config.weight_decay = 0.1
  config.adam_b2 = 0.999
  # The parameter average is what evaluation scores (BUILD_NOTES.md: it
  # lowers the test NLL of the LSTM and the GRU).
  config.ema_decay = 0.998
  config.eval_every_steps = 100  # Valid: the whole split (every frame).
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.sample_every_steps = 0
  config.sample = config_dict.ConfigDict()
  config.sample.num_samples = 4
  config.sample.length = 64  # Frames (quarter notes).
  config.sample.temperature = 1.0
  # Serial: a frame's EOF is forced after this many keys (JSB has at most 4).
  config.sample.max_notes_per_frame = 8

  if arg == "smoke":
    config.model.hidden_size = 32
    config.batch_size = 16
    config.num_train_steps = 20
    config.warmup_steps = 5
    config.log_every_steps = 5
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    config.sample_every_steps = 20
    # A horizon of ~10 of the 20 steps, so the evaluated average has trained.
    config.ema_decay = 0.9
    config.sample.num_samples = 2
    config.sample.length = 16
  return config
