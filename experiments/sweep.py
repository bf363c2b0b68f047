r"""Sweep the latent size of LSTM autoencoders on every layer, as one batched computation.

  python -m experiments.sweep --latents=10,25,50,75,150
  python -m experiments.sweep --dataset=stringer --data_path=stringer_spontaneous.npy
  python -m experiments.sweep --dataset=array --data_path=activity.npy   # [time, neurons]
  python -m experiments.sweep --dataset=lorenz --latents=1,2,3,4,6,8,12 --seeds=3

Writes results.json, results.csv, sweep.png, report.md, tb/, metrics.jsonl,
flags.txt and checkpoints/ into --workdir; re-running the same command resumes.
Every flag is a setting declared in nmas_jax.config; this script is a thin
wrapper over nmas_jax.DimensionSweep.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

from nmas_jax import declare
from nmas_jax.config import DataSettings, RunSettings, Settings
from nmas_jax.errors import Preempted, SweepStopped, UserError, WriteError
from nmas_jax.reporting import tables
from nmas_jax.training import cpu

FLAGS = flags.FLAGS
declare.define_flags(Settings, DataSettings, RunSettings)


def _run(cfg: Settings, ds: DataSettings, run: RunSettings):
  """Loads the data and fits the sweep (JAX starts here, after `cpu.tune`)."""
  from nmas_jax import DimensionSweep
  from nmas_jax.data import loaders
  from nmas_jax.training import sharding

  if run.distributed:
    sharding.initialize_distributed(
      run.coordinator_address, run.num_processes, run.process_id, run.heartbeat_timeout_s
    )
  dataset = loaders.load(
    ds,
    drop_nonfinite=run.nan_policy == "drop_neurons",
    warn=lambda m: print(f"warning: {m}", file=sys.stderr, flush=True),
  )
  est = DimensionSweep(**dataclasses.asdict(cfg))
  return est.fit(
    dataset,
    identity=declare.identity(cfg, ds),
    flags_text=declare.flags_text(cfg, ds, run),
    data_seed=ds.data_seed,
    **dataclasses.asdict(run),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cpu.tune()  # before JAX starts its backend
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no 'TPU not found' noise.
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  try:
    cfg, ds, run = (declare.from_flags(c, FLAGS) for c in (Settings, DataSettings, RunSettings))
    est = _run(cfg, ds, run)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (SweepStopped, WriteError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:
    print(
      "\ninterrupted: results.json holds the last evaluation; re-run the same command to "
      "resume from the latest checkpoint",
      file=sys.stderr,
    )
    sys.exit(130)
  if est.paths_:
    _summary(est, run.workdir)


def _summary(est, workdir: str) -> None:
  """The table and the files written (process 0)."""

  r = est.results_
  print()
  print(tables.table(r))
  for line in tables.scaling_lines(r):
    print(line)
  for line in tables.answer_lines(r):
    print(line)
  for layer, g in r.get("shuffle_control", {}).get("layers", {}).items():
    print(
      f"shuffle control, layer {layer}: best held-out gain over the null {g['gain']:.4g} (real) "
      f"vs {g['control_gain']:.4g} (control); chosen {g['chosen']} (real) vs "
      f"{g['control_chosen']} (control)"
    )
  advice = tables.unconverged_advice(r)
  if advice:
    print(f"warning: {advice}", file=sys.stderr)
  pop = r.get("population")
  members = f" ({len(pop['members'])} population members)" if pop else ""
  print(
    f"\ntrained {len(est.table_)} models{members} in {r['seconds']:.1f}s "
    f"(+{r['compile_seconds']:.1f}s compile)"
  )
  print(
    "wrote:\n  "
    + "\n  ".join(
      est.paths_
      + [os.path.join(workdir, n) for n in ("tb", "metrics.jsonl", "flags.txt", "checkpoints")]
    )
  )


if __name__ == "__main__":
  app.run(main)
