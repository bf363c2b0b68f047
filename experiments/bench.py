r"""Benchmark: one batched sweep step vs the same models stepped one by one, vs matmul peak.

  python -m experiments.bench            # a table
  python -m experiments.bench --json     # plus one JSON line
  python -m experiments.bench --phases=main   # time to an answer: each phase of a whole sweep

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
from absl import logging as absl_logging

from nmas_jax import bench, declare, phases
from nmas_jax.errors import UserError
from nmas_jax.training import cpu

FLAGS = flags.FLAGS
declare.define_flags(bench.Shapes)
flags.DEFINE_integer("steps", 20, "Timed steps after warm-up.")
flags.DEFINE_bool("loop", True, "Also time the one-by-one loop of single-model steps.")
flags.DEFINE_bool(
  "torch",
  True,
  "Also time a PyTorch loop over the same models, if torch is "
  "installed (it is not a dependency: pip install torch).",
)
flags.DEFINE_bool("json", False, "Print one JSON line with the figures.")
flags.DEFINE_enum(
  "phases",
  None,
  list(phases.SHAPES),
  "Instead, fit a whole sweep of this named shape (nmas_jax/phases.py: main, the README's main "
  "job; stringer_layer, one Stringer-shaped layer with PCA, FA and the LDS; stringer, nine) "
  "and print the wall time of each phase.",
)
flags.DEFINE_integer(
  "phase_steps",
  0,
  "--phases: cap training at this many steps (0: each model trains to the convergence "
  "criterion, capped by the family's default --steps).",
  lower_bound=0,
)

flags.DEFINE_integer(
  "population",
  0,
  "Instead, time a population's rounds (--population members of the main job's models at "
  "latents 10,25,50, one seed): --steps steps with a round every --pbt_every steps against "
  "none, interleaved; prints both and the overhead.",
  lower_bound=0,
)
flags.DEFINE_integer("pbt_every", 25, "--population: steps between rounds.", lower_bound=1)


def main(argv):
  del argv
  tuned = cpu.tune()  # before JAX starts its backend
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  absl_logging.set_verbosity(absl_logging.WARNING)  # --phases saves checkpoints: orbax logs each
  try:
    shapes = declare.from_flags(bench.Shapes, FLAGS)
    if FLAGS.steps < 1:
      raise UserError(f"--steps must be a positive integer, got {FLAGS.steps}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.population:
    res = bench.pbt_overhead(FLAGS.population, FLAGS.pbt_every, FLAGS.steps, log=print)
    print(json.dumps(res))
    return
  if FLAGS.phases:
    res = phases.run(FLAGS.phases, FLAGS.phase_steps or None)
    print(phases.table(res))
    if FLAGS.json:
      print(json.dumps(res))
    return
  res = bench.run(
    shapes,
    steps=FLAGS.steps,
    loop=FLAGS.loop,
    torch_loop=FLAGS.torch,
    log=lambda s: print(s, flush=True),
  )
  res["malloc"] = tuned["malloc"]  # glibc settings the CLI applied (cpu.tune_malloc)
  print(bench.table(res))
  if FLAGS.json:
    print(json.dumps(res))


if __name__ == "__main__":
  app.run(main)
