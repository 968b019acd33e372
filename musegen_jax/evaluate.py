r"""Evaluates an export bundle on a split of its dataset and prints one JSON line.

    python -m musegen_jax.evaluate --export=exports/gan --split=valid
    python -m musegen_jax.evaluate --export=exports/lstm --split=test

What is measured is the task's own evaluation, the one training runs every
eval period: the GAN's Frechet distance between log-mel statistics of
generated and real clips of the split; a token model's loss, accuracy and
perplexity over the split; the VAE's negative ELBO, reconstruction and KL
(nats per sequence), reconstruction per token and accuracy; the style
classifier's loss and accuracy per window, its accuracy per piece and the
pieces' confusion matrix ({"confusion": {TRUE: {PREDICTED: count}}}).
Choose models on valid, never on test.

With `--classifier=CLS` (a bundle of the classify task) the bundle is a
style-conditioned token model (or, with `--style`, a VAE trained on a
labelled dataset), and what is measured is its samples: for
`--style=NAME` (default: each of its styles) it draws `--num_samples`
pieces at `--guidance`, decodes them, and reports the share the classifier
assigns to the requested style (`style_share`) and what it predicted. A
VAE's samples are its training window long and start from the style's
region of the latent space (`--nostyle_prior`: from N(0, I)):

    python -m musegen_jax.evaluate --export=exports/styles_lstm \
        --classifier=exports/style_classifier --num_samples=64 --guidance=2

A VAE bundle with `--classifier` and no `--style` is measured on style
transfer instead (a conditioned VAE also decodes with the target style): up
to `--num_samples` pieces of the split that are not of the target style
(`--to_style`, default each style) are moved to it at `--strength`; reported
are the share the classifier gives the target style, and how much of the
source survives (cosine similarity of pitch-class and onset-position
histograms, `data/features.py`) beside the same similarity between the
source and a real piece of the target style (the baseline a transfer that
kept nothing would reach):

    python -m musegen_jax.evaluate --export=exports/styles_vae \
        --classifier=exports/style_classifier --split=test --strength=1

Several bundles, comma-separated, are evaluated as an ensemble: the average
of their predictive distributions (probabilities, not logits), scored like
one model, beside each member's own figure. The members may differ in
model and size but not in task or data (the token and piano-roll tasks):

    python -m musegen_jax.evaluate --split=test \
        --export=exports/jsb_transformer_s0,exports/jsb_transformer_s1
"""

from __future__ import annotations

import json
from typing import Any

from absl import flags

from musegen_jax import cli
from musegen_jax import errors
from musegen_jax import runtime

# Before note_seq is imported: see runtime.setup_if_run_as_command.
runtime.setup_if_run_as_command(__name__)

def _load(export_dir: str, split: str, data_dir: str | None,
          num_batches: int | None):
  """(bundle, its config, its task, the split's eval data)."""
  from musegen_jax import checkpoint
  from musegen_jax import tasks
  from musegen_jax import train

  bundle = checkpoint.load_bundle(export_dir)
  config = bundle.config.copy_and_resolve_references()
  if data_dir:
    config.data.dir = data_dir
  config.num_eval_batches = (tasks.evaluate_num_batches(config)
                             if num_batches is None else num_batches)
  data_dir = train.resolve_data_dir(config)
  task = tasks.create_task(config, train.load_representation(config, data_dir))
  data_dir = task.prepare_data(data_dir)
  return bundle, config, task, task.eval_data(data_dir, split)


def _mesh(batch_size: int):
  """The largest device count that divides the batch: the evaluating machine
  may have other devices than the training one."""
  import jax

  from musegen_jax import parallel

  count = max(n for n in range(1, jax.device_count() + 1) if batch_size % n == 0)
  return parallel.create_mesh(jax.devices()[:count])


def evaluate(export_dir: str, *, split: str = "valid", data_dir: str | None = None,
             num_batches: int | None = None) -> dict[str, Any]:
  """The task's eval metrics of bundle `export_dir` on `split`.

  A comma-separated list of bundles is evaluated as an ensemble
  (`evaluate_ensemble`).
  """
  from musegen_jax import train

  if "," in export_dir:
    return evaluate_ensemble(export_dir.split(","), split=split,
                             data_dir=data_dir, num_batches=num_batches)
  bundle, config, task, eval_data = _load(export_dir, split, data_dir,
                                          num_batches)
  mesh = _mesh(config.batch_size)
  _, eval_step = train.jit_steps(task, mesh)
  metrics = train.evaluate(eval_step, task, bundle.params, eval_data, mesh,
                           config.num_eval_batches)
  return {"export": export_dir, "step": bundle.step, "split": split,
          "task": config.task, "model": config.model.name, **_nested(metrics)}


def _nested(metrics: dict[str, float]) -> dict[str, Any]:
  """Flat "a/b/c" figures (the classifier's "confusion/TRUE/PREDICTED"
  counts, flat for TensorBoard) as {"a": {"b": {"c": value}}}."""
  out: dict[str, Any] = {}
  for key, value in metrics.items():
    *parents, leaf = key.split("/")
    node = out
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = int(value) if parents and float(value).is_integer() else value
  return out


def evaluate_ensemble(export_dirs: list[str], *, split: str = "valid",
                      data_dir: str | None = None,
                      num_batches: int | None = None) -> dict[str, Any]:
  """Eval metrics of the average of the bundles' predictive distributions.

  Each target's probabilities are averaged over the members (a mixture,
  itself a model of the data) and scored by the first member's task. The
  tasks must give `eval_log_probs` and `log_prob_sums` (the token and the
  piano-roll tasks do) and read the same eval data.

  Returns:
    The mixture's metrics, and under "members" each bundle's own (the same
    figures `evaluate` gives for it alone).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from musegen_jax import parallel
  from musegen_jax import train

  export_dirs = [d for d in export_dirs if d]
  if len(export_dirs) < 2:
    raise errors.UserError(f"--export: an ensemble needs two or more bundles; "
                           f"got {export_dirs}.")
  members = [_load(d, split, data_dir, num_batches) for d in export_dirs]
  _, config, task, eval_data = members[0]
  leaves = jax.tree.leaves(eval_data)
  for export_dir, (_, other_config, other_task, other_data) in zip(
      export_dirs, members):
    if not hasattr(other_task, "eval_log_probs"):
      raise errors.UserError(f"--export={export_dir}: task {other_config.task!r} has no "
                       "eval_log_probs; ensembles need the token (lm) or the "
                       "piano-roll task.")
    other_leaves = jax.tree.leaves(other_data)
    same = (other_config.task == config.task and
            jax.tree.structure(other_data) == jax.tree.structure(eval_data) and
            all(np.array_equal(a, b) for a, b in zip(other_leaves, leaves)))
    if not same:
      raise errors.UserError(f"--export={export_dir} (task {other_config.task!r}) reads other "
                       f"{split} data than {export_dirs[0]} (task "
                       f"{config.task!r}): an ensemble's members must share "
                       "their task and data.")
  mesh = _mesh(config.batch_size)
  member_tasks = [member_task for _, _, member_task, _ in members]

  def sums(params, batch):
    """Each member's sums, then the mixture's: one program per batch."""
    log_probs = [member_task.eval_log_probs(p, batch)
                 for member_task, p in zip(member_tasks, params)]
    shapes = {d: lp.shape for d, lp in zip(export_dirs, log_probs)}
    if len(set(shapes.values())) > 1:
      raise ValueError(f"The members predict different shapes ({shapes}): "
                       "other vocabularies?")
    mixture = (jax.nn.logsumexp(jnp.stack(log_probs), axis=0) -
               jnp.log(float(len(log_probs))))
    return [task.log_prob_sums(lp, batch) for lp in log_probs + [mixture]]

  step = train.accumulating(sums)
  params = [bundle.params for bundle, *_ in members]
  totals = None
  for i, batch in enumerate(task.eval_batches(eval_data)):
    if 0 <= config.num_eval_batches <= i:
      break
    totals = step(totals, params, parallel.global_batch(batch, mesh))
  summaries = [task.summarize(jax.device_get(t), eval_data) for t in totals]
  return {"exports": export_dirs, "split": split, "task": config.task,
          **summaries[-1],
          "members": [{"export": d, "step": bundle.step,
                       "model": member_config.model.name, **summary}
                      for d, (bundle, member_config, *_), summary in zip(
                          export_dirs, members, summaries)]}


def evaluate_styles(export_dir: str, classifier_dir: str, *,
                    style: str | None = None, num_samples: int = 64,
                    guidance: float = 1.0, length: int | None = None,
                    temperature: float | None = None, top_p: float | None = None,
                    seed: int = 0, style_prior: bool = True) -> dict[str, Any]:
  """How often a style classifier finds the requested style in samples of a
  style-conditioned token model or a VAE trained on a labelled dataset.

  For each style (`style`, or every style of the model) `num_samples` pieces
  of `length` tokens are drawn in one batch at `guidance` and scored whole
  by the classifier (`ClassifyTask.classify_rolls`). `length`, `temperature`
  and `top_p` default to the model's `config.sample` (what `sample` draws;
  a VAE's `length`: its training window, `data.seq_len`). A VAE's latents
  come from each style's region with `style_prior` (`VAETask.sample_pieces`).

  Returns:
    {"style_share": {style: share classified as it}, "mean_style_share",
    "predicted": {style: {classifier style: count}}, and the settings}.

  Raises:
    errors.UserError: the bundles are not a conditioned token model and a
      classifier, a style unknown to either, or a bad count.
  """
  import jax
  import numpy as np

  from musegen_jax import checkpoint
  from musegen_jax import tasks
  from musegen_jax.data import pipeline

  if num_samples < 1:
    raise errors.UserError(f"--num_samples={num_samples}: must be >= 1.")
  generator, judge = checkpoint.load_bundle(export_dir), checkpoint.load_bundle(classifier_dir)
  if judge.config.task != "classify":
    raise errors.UserError(f"--classifier={classifier_dir} holds a "
                           f"{judge.config.task!r} model, not a style classifier "
                           "(config.task='classify').")
  if generator.config.task not in ("lm", "vae"):
    raise errors.UserError(f"--export={export_dir} holds a {generator.config.task!r} "
                           "model; --classifier scores a style-conditioned token "
                           "model (lm) or VAE.")
  gen_task = tasks.create_task(generator.config,
                               pipeline.representation_from_spec(generator.representation))
  cls_task = tasks.create_task(judge.config,
                               pipeline.representation_from_spec(judge.representation))
  is_vae = generator.config.task == "vae"
  known = gen_task.styles or (is_vae and generator.extras.get("style_latents", {})
                              .get("styles", [])) or []
  if not known:
    raise errors.UserError(f"--export={export_dir}: the model is not style-"
                           "conditioned (config.condition.enabled)"
                           + (" and has no style latents." if is_vae else "."))
  wanted = [style] if style else list(known)
  for name in wanted:
    # Unknown to the model: the known ones listed.
    if is_vae:
      gen_task.check_sample_style(name, generator.extras, guidance=guidance,
                                  style_prior=style_prior)
    else:
      gen_task.style_token(name)
    if name not in cls_task.styles:
      raise errors.UserError(f"--style={name!r}: the classifier knows "
                             f"{', '.join(cls_task.styles)}.")
  settings = generator.config.sample
  if length is None:
    length = generator.config.data.seq_len if is_vae else settings.length
  length = int(length)
  vae_args = {"extras": generator.extras, "style_prior": style_prior} if is_vae else {}
  temperature = float(settings.temperature if temperature is None else temperature)
  top_p = float(settings.top_p if top_p is None else top_p)
  shares, predicted = {}, {}
  for i, name in enumerate(wanted):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    tokens, prime = gen_task.sample_pieces(
        generator.params, rng, num_samples=num_samples, length=length,
        temperature=temperature, top_p=top_p, style=name, guidance=guidance,
        **vae_args)
    picked = _classify(cls_task, judge.params, [
        gen_task.representation.decode_sample(np.concatenate([prime[j], row]))
        for j, row in enumerate(tokens)])
    # A sample with no notes is no piece of any style: counted as a miss.
    counts = {c: picked.count(c) for c in cls_task.styles}
    counts["no notes"] = picked.count(None)
    predicted[name] = counts
    shares[name] = counts[name] / len(picked)
  return {"export": export_dir, "classifier": classifier_dir, "num_samples": num_samples,
          "length": length, "guidance": guidance, "temperature": temperature,
          "top_p": top_p, **({"style_prior": style_prior} if is_vae else {}),
          "style_share": shares,
          "mean_style_share": float(np.mean(list(shares.values()))),
          "predicted": predicted}


def _classify(cls_task, params: Any, sequences: list) -> list[str | None]:
  """The style the classifier picks for each NoteSequence (None: no notes)."""
  import numpy as np
  rolls = [cls_task.representation.encode(ns) for ns in sequences]
  scored = [i for i, r in enumerate(rolls) if len(r)]
  picks = np.full((len(rolls),), -1)
  if scored:
    probs = cls_task.classify_rolls(params, [rolls[i] for i in scored])
    picks[scored] = np.argmax(probs, axis=-1)
  return [cls_task.styles[p] if p >= 0 else None for p in picks]


def _bundle_task(export_dir: str) -> str:
  from musegen_jax import checkpoint
  return checkpoint.load_bundle(export_dir).config.task


def evaluate_transfer(export_dir: str, classifier_dir: str, *,
                      to_style: str | None = None, strength: float = 1.0,
                      split: str = "test", num_samples: int = 64,
                      data_dir: str | None = None, temperature: float = 1.0,
                      guidance: float = 1.0, seed: int = 0,
                      windows: int = 1) -> dict[str, Any]:
  """Style transfer of a VAE bundle measured by a style classifier.

  For each target style, up to `num_samples` pieces of `split` of other
  styles (their first `windows` windows) are moved to it
  (`VAETask.transfer_piece`, from their own labelled style) and decoded once
  at `temperature`; a piece's decoded windows are joined and classified
  (and compared with its source windows, joined) as one piece.

  Returns:
    {"transfer": {target: {"target_share", "source_share",
    "source_window_share", "pitch_class", "rhythm", "baseline_pitch_class",
    "baseline_rhythm", "pieces"}}, "mean_target_share", and the settings}.
    "source_share": the share still classified as the source style;
    "source_window_share": the share of the source windows themselves
    classified as their style (the classifier's ceiling at this length); the
    baselines compare each source with a real piece of the target style
    instead.
  """
  import jax
  import numpy as np

  from musegen_jax import checkpoint
  from musegen_jax import tasks
  from musegen_jax import train
  from musegen_jax.data import features
  from musegen_jax.data import labels
  from musegen_jax.data import pipeline
  from musegen_jax.data import shards

  if num_samples < 1:
    raise errors.UserError(f"--num_samples={num_samples}: must be >= 1.")
  if windows < 1:
    raise errors.UserError(f"--windows={windows}: must be >= 1.")
  vae, judge = checkpoint.load_bundle(export_dir), checkpoint.load_bundle(classifier_dir)
  if judge.config.task != "classify":
    raise errors.UserError(f"--classifier={classifier_dir} holds a "
                           f"{judge.config.task!r} model, not a style classifier.")
  config = vae.config.copy_and_resolve_references()
  if data_dir:
    config.data.dir = data_dir
  vae_task = tasks.create_task(config, pipeline.representation_from_spec(vae.representation))
  cls_task = tasks.create_task(judge.config,
                               pipeline.representation_from_spec(judge.representation))
  names = list(vae.extras.get("style_latents", {}).get("styles", []))
  if not names:
    raise errors.UserError(f"--export={export_dir}: the VAE has no style latents "
                           "(train it on a labelled dataset).")
  targets = [to_style] if to_style else names
  for name in targets:
    if name not in names or name not in cls_task.styles:
      raise errors.UserError(f"--to_style={name!r}: the VAE knows {', '.join(names)}; "
                             f"the classifier {', '.join(cls_task.styles)}.")
  pieces = [(labels.get_label(ns), ns) for ns in shards.read_note_sequences(
      shards.split_paths(train.resolve_data_dir(config), split))]
  results = {}
  for t, target in enumerate(targets):
    sources = [(style, ns) for style, ns in pieces if style != target][:num_samples]
    references = [ns for style, ns in pieces if style == target]
    if not sources or not references:
      raise errors.UserError(f"split {split!r} needs pieces of {target!r} and of "
                             "other styles to measure a transfer to it.")
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), t)
    moved = [vae_task.transfer_piece(vae.params, ns, target, vae.extras, from_style=style,
                                     strength=strength, windows=windows)
             for style, ns in sources]
    tokens = vae_task.generate(
        vae.params, rng, np.concatenate([z for _, z, _ in moved]),
        length=vae_task.seq_len, temperature=temperature,
        style=vae_task.transfer_styles(
            target, [style for (style, _), (rows, _, _) in zip(sources, moved)
                     for _ in rows], strength), guidance=guidance)
    decoded = [vae_task.representation.decode_sample(row) for row in tokens]
    ends = np.cumsum([len(rows) for rows, _, _ in moved])
    results_ns = [vae_task.join_windows(decoded[end - len(rows):end])
                  for end, (rows, _, _) in zip(ends, moved)]
    joined = lambda rows: vae_task.join_windows(
        [vae_task.representation.decode(row) for row in rows])
    source_ns = [joined(rows) for rows, _, _ in moved]
    picked = _classify(cls_task, judge.params, results_ns)
    own = _classify(cls_task, judge.params, source_ns)
    kept = [features.similarity(w, r) for w, r in zip(source_ns, results_ns)]
    reference = [joined(vae_task.piece_windows(references[i % len(references)], windows))
                 for i in range(len(source_ns))]
    baseline = [features.similarity(w, r) for w, r in zip(source_ns, reference)]
    results[target] = {
        "target_share": float(np.mean([p == target for p in picked])),
        "source_share": float(np.mean([p == s for p, (s, _) in zip(picked, sources)])),
        # The same classifier on the source windows themselves: how well it
        # tells styles apart at this length (a ceiling for the shares).
        "source_window_share": float(np.mean([p == s for p, (s, _) in zip(own, sources)])),
        "pitch_class": float(np.mean([k["pitch_class"] for k in kept])),
        "rhythm": float(np.mean([k["rhythm"] for k in kept])),
        "baseline_pitch_class": float(np.mean([b["pitch_class"] for b in baseline])),
        "baseline_rhythm": float(np.mean([b["rhythm"] for b in baseline])),
        "pieces": len(sources)}
  return {"export": export_dir, "classifier": classifier_dir, "split": split,
          "strength": strength, "temperature": temperature, "guidance": guidance,
          "windows": windows, "transfer": results,
          "mean_target_share": float(np.mean([r["target_share"] for r in results.values()]))}


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses extra arguments.
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  runtime.setup(compile_cache=True)
  if (FLAGS.classifier and _bundle_task(FLAGS.export) == "vae"
      and FLAGS.style is None):
    print(json.dumps(evaluate_transfer(
        FLAGS.export, FLAGS.classifier, to_style=FLAGS.to_style,
        strength=FLAGS.strength, split=FLAGS.split, num_samples=FLAGS.num_samples,
        data_dir=FLAGS.data_dir,
        temperature=1.0 if FLAGS.temperature is None else FLAGS.temperature,
        guidance=FLAGS.guidance, seed=FLAGS.seed, windows=FLAGS.windows)))
    return
  if FLAGS.classifier:
    print(json.dumps(evaluate_styles(
        FLAGS.export, FLAGS.classifier, style=FLAGS.style,
        num_samples=FLAGS.num_samples, guidance=FLAGS.guidance, length=FLAGS.length,
        temperature=FLAGS.temperature, top_p=FLAGS.top_p, seed=FLAGS.seed,
        style_prior=FLAGS.style_prior)))
    return
  print(json.dumps(evaluate(FLAGS.export, split=FLAGS.split,
                            data_dir=FLAGS.data_dir, num_batches=FLAGS.num_batches)))


def run() -> None:
  # Flags are defined here, not at import, so that importing this module
  # next to sample.py (both have --export) does not clash.
  flags.DEFINE_string("export", None,
                      "Bundle written by musegen_jax.export; several, "
                      "comma-separated: their ensemble (averaged predictive "
                      "distributions).")
  flags.DEFINE_enum("split", "valid", ["train", "valid", "test"],
                    "Split to evaluate on.")
  flags.DEFINE_string("data_dir", None,
                      "Prepared dataset (default: the one the model was trained on).")
  flags.DEFINE_integer("num_batches", None,
                       "Eval batches (-1: the whole split; the GAN compares this "
                       "many batches of generated clips with as many real ones). "
                       "Default: the training config's num_eval_batches (for "
                       "the GAN at least 512 clips).")
  flags.DEFINE_string("classifier", None,
                      "A style classifier's bundle: score samples of --export "
                      "(a style-conditioned token model) by style instead.")
  flags.DEFINE_string("style", None, "With --classifier: the style to sample "
                      "(default: each of the model's styles; a VAE: give it to "
                      "score prior samples instead of transfers).")
  flags.DEFINE_integer("num_samples", 64, "With --classifier: samples per style (a "
                       "VAE: source pieces per target style).")
  flags.DEFINE_float("guidance", 1.0, "With --classifier: classifier-free guidance "
                     "scale (1: off), of samples or a conditioned VAE's transfers.")
  flags.DEFINE_integer("length", None, "With --classifier: tokens per sample "
                       "(default: the model's sample.length; a VAE: data.seq_len).")
  flags.DEFINE_bool("style_prior", True, "With --classifier and a VAE's --style: "
                    "draw z from the style's region of the latent space (the "
                    "bundle's style latents) rather than N(0, I).")
  flags.DEFINE_float("temperature", None, "With --classifier: sampling temperature "
                     "(default: the model's sample.temperature; a VAE: 1).")
  flags.DEFINE_float("top_p", None, "With --classifier: nucleus mass, 1: off "
                     "(default: the model's sample.top_p).")
  flags.DEFINE_integer("seed", 0, "With --classifier: sampling seed.")
  flags.DEFINE_string("to_style", None, "With --classifier and a VAE: the target "
                      "style of the transfers (default: each style).")
  flags.DEFINE_float("strength", 1.0, "With --classifier and a VAE: how far the "
                     "transfers move (0..1).")
  flags.DEFINE_integer("windows", 1, "With --classifier and a VAE: transfer each "
                       "piece's first N windows of data.seq_len tokens, joined "
                       "into one piece (1: the first window only).")
  flags.mark_flags_as_required(["export"])
  runtime.setup()
  cli.run(main)


if __name__ == "__main__":
  run()
