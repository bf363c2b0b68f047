r"""Sweep the latent size of LSTM autoencoders on every layer, as one batched computation.

  python -m experiments.sweep --latents=10,25,50,75,150
  python -m experiments.sweep --dataset=stringer --data_path=stringer_spontaneous.npy
  python -m experiments.sweep --dataset=array --data_path=activity.npy   # [time, neurons]
  python -m experiments.sweep --dataset=lorenz --latents=1,2,3,4,6,8,12 --seeds=3

Writes results.json, results.csv, sweep.png, report.md, tb/, metrics.jsonl,
flags.txt and checkpoints/ into --workdir; re-running the same command resumes.
A thin wrapper over nmas_jax.DimensionSweep.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

import jax

from nmas_jax import data, evaluate, report, sharding, sweep
from nmas_jax.api import DimensionSweep, SweepStopped
from nmas_jax.data import UserError

sharding.tune_cpu_flags()  # before JAX creates its backend
sharding.tune_malloc()

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
flags.DEFINE_bool("shuffle_control", False, "Also sweep a control copy of each layer whose "
                  "neurons are circularly shifted in time by their own random offsets.")
flags.DEFINE_string("dtype", _D.dtype, "Matmul dtype: float32, or bfloat16 on GPU/TPU.")
flags.DEFINE_string("nwb_series", None, "NWB: name of the RoiResponseSeries to read, or 'units' for "
                    "spikes; needed when the file has several.")
flags.DEFINE_float("bin_ms", 50.0, "NWB spikes: bin width in milliseconds.")
flags.DEFINE_enum("batching", "auto", ["auto", "vmap", "by_latent"],
                  "How one step runs the models: vmap (all at the widest latent), by_latent (one "
                  "vmap per latent size, at its own width; one device) or auto (by_latent on one "
                  "CPU device, else vmap). Results agree to float rounding.")
flags.DEFINE_string("mesh", "auto", "Device mesh: auto (all local devices on the models axis) or "
                    "e.g. models:4,data:2.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (multi-host; from the flags "
                  "below when given, else from the TPU/cluster environment).")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "With --distributed: number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
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
                   "bin", "neurons_per_layer", "data_seed", "shuffle_control", "dtype",
                   "nwb_series", "bin_ms")

_SWEEP_FLAGS = ("latents", "dataset", "data_path", "data_key", "layers", "seeds", "steps",
                "batch_size", "window", "hidden", "learning_rate", "weight_decay", "clip_norm",
                "decoder", "bidirectional", "likelihood", "heldout_neurons", "gain_fraction", "shuffle_control", "dtype", "nwb_series", "bin_ms", "shared_model", "train_fraction", "normalize", "bin",
                "neurons_per_layer", "data_seed", "workdir", "log_every", "checkpoint_every",
                "keep_checkpoints", "nan_policy", "mesh", "batching")


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


def main(argv):
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no 'TPU not found' noise.
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.distributed:
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  try:
    est = DimensionSweep(
        latents=sweep.parse_latents(FLAGS.latents), seeds=FLAGS.seeds, steps=FLAGS.steps,
        batch_size=FLAGS.batch_size, window=FLAGS.window, hidden=FLAGS.hidden,
        learning_rate=FLAGS.learning_rate, weight_decay=FLAGS.weight_decay,
        clip_norm=FLAGS.clip_norm, decoder=FLAGS.decoder, bidirectional=FLAGS.bidirectional,
        likelihood=FLAGS.likelihood, heldout_neurons=FLAGS.heldout_neurons,
        train_fraction=FLAGS.train_fraction, gain_fraction=FLAGS.gain_fraction,
        shuffle_control=FLAGS.shuffle_control, shared_model=FLAGS.shared_model,
        log_every=FLAGS.log_every, dtype=FLAGS.dtype)
    if FLAGS.nan_policy not in sweep.NAN_POLICIES:
      raise UserError(f"unknown --nan_policy={FLAGS.nan_policy!r}: choose one of "
                      f"{', '.join(sweep.NAN_POLICIES)}")
    if FLAGS.checkpoint_every < 0:
      raise UserError(f"--checkpoint_every must be >= 0, got {FLAGS.checkpoint_every}")
    if FLAGS.keep_checkpoints < 1:
      raise UserError(f"--keep_checkpoints must be at least 1, got {FLAGS.keep_checkpoints}")
    dataset = data.load_dataset(FLAGS.dataset, path=FLAGS.data_path, key=FLAGS.data_key,
                                normalize_method=FLAGS.normalize, bin_size=FLAGS.bin,
                                neurons_per_layer=FLAGS.neurons_per_layer, seed=FLAGS.data_seed,
                                drop_nonfinite=FLAGS.nan_policy == "drop_neurons",
                                warn=lambda m: print(f"warning: {m}", file=sys.stderr, flush=True),
                                nwb_series=FLAGS.nwb_series, bin_ms=FLAGS.bin_ms)
    dataset = dataset.select_layers(FLAGS.layers)
    est.fit(dataset, workdir=FLAGS.workdir, identity=_identity(), overwrite=FLAGS.overwrite,
            checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints,
            nan_policy="stop" if FLAGS.nan_policy == "stop" else "freeze",
            flags_text=_flagfile_text(), data_seed=FLAGS.data_seed, mesh=FLAGS.mesh,
            batching=FLAGS.batching)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except SweepStopped as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("\ninterrupted: results.json holds the last evaluation; re-run the same command to "
          "resume from the latest checkpoint", file=sys.stderr)
    sys.exit(130)
  if jax.process_index() != 0:
    return
  print()
  print(report.table(est.results_))
  if est.results_.get("shuffle_control"):
    for layer, g in est.results_["shuffle_control"]["layers"].items():
      print(f"shuffle control, layer {layer}: held-out gain over the smallest latent "
            f"{g['gain']:.4g} (real) vs {g['control_gain']:.4g} (control)")
  r = est.results_
  print(f"\ntrained {len(est.table_)} models in {r['seconds']:.1f}s (+{r['compile_seconds']:.1f}s compile)")
  print("wrote:\n  " + "\n  ".join(est.paths_ + [os.path.join(FLAGS.workdir, n) for n in
                                                  ("tb", "metrics.jsonl", "flags.txt", "checkpoints")]))


if __name__ == "__main__":
  app.run(main)
