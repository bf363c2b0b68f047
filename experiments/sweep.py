r"""Sweep the latent size of LSTM autoencoders on every layer, as one batched computation.

  python -m experiments.sweep --latents=10,25,50,75,150
  python -m experiments.sweep --dataset=stringer --data_path=stringer_spontaneous.npy
  python -m experiments.sweep --dataset=array --data_path=activity.npy   # [time, neurons]

Writes results.json, results.csv, sweep.png, tb/, metrics.jsonl and flags.txt
into --workdir.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from nmas_jax import checkpoint, data, decoding, evaluate, report, sweep, writers
from nmas_jax.data import UserError

_D = sweep.SweepConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("latents", ",".join(map(str, _D.latents)), "Comma-separated latent sizes.")
flags.DEFINE_string("dataset", "synthetic", f"One of {', '.join(data.DATASETS)}.")
flags.DEFINE_string("data_path", "", "Data file (stringer: .npy dict; array: .npy/.npz).")
flags.DEFINE_string("data_key", None, "Array name inside an .npz file.")
flags.DEFINE_list("layers", [], "Layer names to keep (as in results.json); default all.")
flags.DEFINE_integer("seeds", _D.seeds, "Seeds per (layer, latent): seeds 0..N-1.")
flags.DEFINE_integer("steps", _D.steps, "Training steps.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Windows per batch.")
flags.DEFINE_integer("window", _D.window, "Window length in time bins (after --bin).")
flags.DEFINE_integer("hidden", _D.hidden, "LSTM units.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "AdamW learning rate.")
flags.DEFINE_float("weight_decay", _D.weight_decay, "AdamW weight decay.")
flags.DEFINE_float("clip_norm", _D.clip_norm, "Global gradient-norm clip.")
flags.DEFINE_string("decoder", _D.decoder, "linear: readout from z_t alone (as the original); "
                    "lstm: an LSTM over z, then a readout.")
flags.DEFINE_bool("bidirectional", _D.bidirectional, "Add a reverse-time encoder LSTM.")
flags.DEFINE_string("likelihood", _D.likelihood, "gaussian (MSE), poisson (counts), or auto: "
                    "poisson for --dataset=lorenz, else gaussian.")
flags.DEFINE_float("heldout_neurons", _D.heldout_neurons, "Fraction of each layer's neurons hidden "
                   "from the encoder and scored by co-smoothing (0 disables).")
flags.DEFINE_float("gain_fraction", evaluate.DEFAULT_GAIN_FRACTION, "Dimension estimate: smallest "
                   "latent reaching this fraction of the best held-out gain.")
flags.DEFINE_bool("shared_model", False, "Also train one model per latent size on all layers "
                  "together and decode the layer from its latents (decoding.png).")
flags.DEFINE_float("train_fraction", _D.train_fraction, "Leading fraction of time for training.")
flags.DEFINE_string("normalize", "mean_per_bin", "Recorded data: mean_per_bin | zscore | none.")
flags.DEFINE_integer("bin", 2, "Recorded data: average this many adjacent time bins.")
flags.DEFINE_integer("neurons_per_layer", None, "Subsample each layer to this many neurons "
                     "(default: the smallest layer's count).")
flags.DEFINE_integer("data_seed", 0, "Seed for subsampling neurons and for synthetic data.")
flags.DEFINE_string("workdir", "runs/sweep", "Output directory.")
flags.DEFINE_integer("log_every", _D.log_every, "Steps between progress lines and evaluations.")
flags.DEFINE_integer("checkpoint_every", 100, "Steps between checkpoints (0: only at the end).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in <workdir>/checkpoints.")
flags.DEFINE_bool("overwrite", False, "Replace a different sweep found in --workdir.")
flags.DEFINE_string("nan_policy", "freeze", "freeze: a diverging model is frozen and flagged, the "
                    "others go on; stop: stop the sweep; drop_neurons: also drop neurons with "
                    "NaN/Inf in the data (with a warning) instead of refusing the data.")

# The settings that define a sweep: a workdir holds one sweep, and resuming needs all equal.
_IDENTITY_FLAGS = ("dataset", "data_path", "data_key", "layers", "latents", "seeds", "batch_size",
                   "window", "hidden", "learning_rate", "weight_decay", "clip_norm", "decoder",
                   "bidirectional", "likelihood", "heldout_neurons", "train_fraction", "normalize",
                   "bin", "neurons_per_layer", "data_seed")

_SWEEP_FLAGS = ("latents", "dataset", "data_path", "data_key", "layers", "seeds", "steps",
                "batch_size", "window", "hidden", "learning_rate", "weight_decay", "clip_norm",
                "decoder", "bidirectional", "likelihood", "heldout_neurons", "gain_fraction", "shared_model", "train_fraction", "normalize", "bin",
                "neurons_per_layer", "data_seed", "workdir", "log_every", "checkpoint_every",
                "keep_checkpoints", "nan_policy")


def _flagfile_text() -> str:
  lines = []
  for name in _SWEEP_FLAGS:
    value = FLAGS[name].value
    if value is None:
      continue
    if isinstance(value, list):
      value = ",".join(value)
    lines.append(f"--{name}={value}")
  return "\n".join(lines) + "\n"


def _identity() -> dict:
  ident = {}
  for name in _IDENTITY_FLAGS:
    v = FLAGS[name].value
    if name == "data_path" and v:
      v = os.path.abspath(v)
    if name == "latents":
      v = list(sweep.parse_latents(v))
    ident[name] = v
  return ident


def _prepare_workdir(path: str) -> str:
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    with open(probe, "w", encoding="utf-8"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to --workdir={path}: {e.strerror or e}") from None
  return path


def main(argv):
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no 'TPU not found' noise.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    cfg = sweep.SweepConfig(
        latents=sweep.parse_latents(FLAGS.latents), seeds=FLAGS.seeds, steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, window=FLAGS.window, hidden=FLAGS.hidden,
        learning_rate=FLAGS.learning_rate, weight_decay=FLAGS.weight_decay,
        clip_norm=FLAGS.clip_norm, decoder=FLAGS.decoder, bidirectional=FLAGS.bidirectional,
        likelihood=FLAGS.likelihood, heldout_neurons=FLAGS.heldout_neurons,
        train_fraction=FLAGS.train_fraction,
        log_every=FLAGS.log_every)
    if FLAGS.nan_policy not in sweep.NAN_POLICIES:
      raise UserError(f"unknown --nan_policy={FLAGS.nan_policy!r}: choose one of "
                      f"{', '.join(sweep.NAN_POLICIES)}")
    dataset = data.load_dataset(FLAGS.dataset, path=FLAGS.data_path, key=FLAGS.data_key,
                                normalize_method=FLAGS.normalize, bin_size=FLAGS.bin,
                                neurons_per_layer=FLAGS.neurons_per_layer, seed=FLAGS.data_seed,
                                drop_nonfinite=FLAGS.nan_policy == "drop_neurons",
                                warn=lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
    dataset = dataset.select_layers(FLAGS.layers)
    sweep.check_config(cfg, dataset)
    if not 0.0 < FLAGS.gain_fraction <= 1.0:
      raise UserError(f"--gain_fraction must be in (0, 1], got {FLAGS.gain_fraction}")
    if FLAGS.checkpoint_every < 0:
      raise UserError(f"--checkpoint_every must be >= 0, got {FLAGS.checkpoint_every}")
    if FLAGS.keep_checkpoints < 1:
      raise UserError(f"--keep_checkpoints must be at least 1, got {FLAGS.keep_checkpoints}")
    workdir = _prepare_workdir(FLAGS.workdir)
    resuming = checkpoint.claim_workdir(workdir, _identity(), FLAGS.overwrite)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

  flags_text = _flagfile_text()
  report.atomic_write(os.path.join(workdir, "flags.txt"), lambda f: f.write(flags_text))
  table = sweep.ModelTable.build(dataset.num_layers, cfg.latents, cfg.seeds)
  names = [f"layer={dataset.layer_names[l]},latent={k},seed={s}"
           for l, k, s in zip(table.layer, table.latent, table.seed)]
  writer = writers.MetricWriter(workdir, names)
  ckpt = checkpoint.Checkpointer(workdir, FLAGS.keep_checkpoints)
  if resuming and ckpt.latest_step() is None:
    print("no checkpoint in the workdir yet: starting from step 0", flush=True)
  partial = lambda o: report.write_json(os.path.join(workdir, "results.json"),
                                        sweep.results_dict(dataset, cfg, o))
  try:
    out = sweep.run_sweep(dataset, cfg, log=lambda s: print(s, flush=True),
                          on_metrics=writer.write_scalars, on_eval=partial, checkpointer=ckpt,
                          checkpoint_every=FLAGS.checkpoint_every, nan_policy=FLAGS.nan_policy)
  except KeyboardInterrupt:
    print(f"\ninterrupted: results.json holds the last evaluation; re-run the same command to "
          f"resume from the latest checkpoint (step {ckpt.latest_step()})", file=sys.stderr)
    sys.exit(130)
  finally:
    writer.close()
    ckpt.close()
  results = sweep.results_dict(dataset, cfg, out)
  if out.stopped:
    report.write_json(os.path.join(workdir, "results.json"), results)
    print(f"error: {out.stopped}", file=sys.stderr)
    sys.exit(1)
  ev = evaluate.evaluate_sweep(dataset, cfg, out, gain_fraction=FLAGS.gain_fraction,
                               log=lambda s: print(s, flush=True))
  results = evaluate.merge_into_results(results, ev)
  if FLAGS.shared_model:
    if dataset.num_layers < 2:
      print("shared model skipped: layer decoding needs at least 2 layers", flush=True)
    else:
      shared = sweep.run_sweep(dataset, cfg, log=lambda s: print(s, flush=True), shared=True)
      results["layer_accuracy"] = decoding.layer_accuracy(dataset, cfg, shared)
  paths = report.write_all(workdir, results, flags_text)
  print()
  print(report.table(results))
  print(f"\ntrained {len(table)} models in {out.seconds:.1f}s (+{out.compile_seconds:.1f}s compile)")
  print("wrote:\n  " + "\n  ".join(paths + [os.path.join(workdir, "tb"),
                                           os.path.join(workdir, "metrics.jsonl"),
                                           os.path.join(workdir, "flags.txt")]))


if __name__ == "__main__":
  app.run(main)
