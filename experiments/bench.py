r"""Benchmark: one batched sweep step vs the same models stepped one by one, vs matmul peak.

  python -m experiments.bench            # a table
  python -m experiments.bench --json     # plus one JSON line

Shapes default to one Stringer layer: 1131 neurons, windows of 50, batch 16,
128 LSTM units, latents 10,25,50,75,150, the LSTM decoder. Compile time is
measured separately and never inside a timed step. With torch installed it
also times a plain PyTorch loop over the same models (--notorch to skip).
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags

from nmas_jax import bench, sharding, sweep
from nmas_jax.data import UserError

sharding.tune_cpu_flags()  # before JAX creates its backend
MALLOC = sharding.tune_malloc()

FLAGS = flags.FLAGS
flags.DEFINE_integer("neurons", 1131, "Neurons per layer.")
flags.DEFINE_integer("window", 50, "Window length (time steps).")
flags.DEFINE_integer("batch_size", 16, "Windows per batch.")
flags.DEFINE_integer("hidden", 128, "LSTM units.")
flags.DEFINE_string("latents", "10,25,50,75,150", "Latent sizes (one model each).")
flags.DEFINE_integer("layers", 1, "Layers (models = layers x latents).")
flags.DEFINE_string("decoder", "lstm", "lstm or linear.")
flags.DEFINE_integer("steps", 20, "Timed steps after warm-up.")
flags.DEFINE_integer("unroll", 1, "Scan unroll factor.")
flags.DEFINE_string("dtype", "float32", "Matmul dtype: float32 or bfloat16.")
flags.DEFINE_enum("batching", "auto", ["auto", "vmap", "by_latent"],
                  "How the sweep step runs the models (see experiments.sweep --batching).")
flags.DEFINE_bool("loop", True, "Also time the one-by-one loop of single-model steps.")
flags.DEFINE_bool("torch", True, "Also time a PyTorch loop over the same models, if torch is "
                  "installed (it is not a dependency: pip install torch).")
flags.DEFINE_bool("json", False, "Print one JSON line with the figures.")


def main(argv):
  del argv
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  try:
    latents = sweep.parse_latents(FLAGS.latents)
    if FLAGS.dtype not in ("float32", "bfloat16"):
      raise UserError(f"unknown --dtype={FLAGS.dtype!r}: choose float32 or bfloat16")
    for name in ("neurons", "window", "batch_size", "hidden", "layers", "steps", "unroll"):
      if FLAGS[name].value < 1:
        raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    if max(latents) > FLAGS.neurons:
      raise UserError(f"latent size {max(latents)} exceeds --neurons={FLAGS.neurons}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  shapes = bench.Shapes(neurons=FLAGS.neurons, window=FLAGS.window, batch_size=FLAGS.batch_size,
                        hidden=FLAGS.hidden, latents=latents, layers=FLAGS.layers,
                        decoder=FLAGS.decoder, unroll=FLAGS.unroll, dtype=FLAGS.dtype,
                        batching=FLAGS.batching)
  res = bench.run(shapes, steps=FLAGS.steps, loop=FLAGS.loop, torch_loop=FLAGS.torch,
                  log=lambda s: print(s, flush=True))
  res["malloc"] = MALLOC  # glibc settings the CLI applied (sharding.tune_malloc)
  print(bench.table(res))
  if FLAGS.json:
    print(json.dumps(res))


if __name__ == "__main__":
  app.run(main)
