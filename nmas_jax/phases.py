"""Time to an answer: a whole sweep on a named shape, with the wall time of each of its phases
(`python -m experiments.bench --phases=NAME`), so the slowest phase is visible."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any


def _main(steps: int | None):
  from nmas_jax.data import synthetic

  return synthetic.make_curved(seed=0), dict(latents=(10, 25, 50, 75, 150), steps=steps)


def _stringer_layer(steps: int | None):
  from nmas_jax.data import synthetic

  data = synthetic.make_linear_gaussian(true_latents=(20,), neurons=1131, time=1750, seed=0)
  return data, dict(
    latents=(10, 25, 50, 75, 150), steps=steps, baselines=("pca", "fa", "lds"), seeds=3
  )


def _stringer(steps: int | None):
  from nmas_jax.data import synthetic

  data = synthetic.make_linear_gaussian(
    true_latents=(10, 15, 20, 25, 30, 35, 40, 45, 50), neurons=1131, time=3500, seed=0
  )
  return data, dict(
    latents=(10, 25, 50, 75, 150),
    steps=steps,
    baselines=("pca", "fa", "lds"),
    seeds=3,
    neuron_counts=(100, 200, 400, 800),
  )


# Named shapes: (data, DimensionSweep arguments) for a step cap (None: the family's default).
SHAPES: dict[str, Callable[[int | None], tuple[Any, dict[str, Any]]]] = {
  # The README's main job: the built-in data, 45 models, PCA and FA.
  "main": _main,
  # One Stringer-shaped layer (1131 neurons, 1750 bins), 15 models, PCA, FA and the LDS.
  "stringer_layer": _stringer_layer,
  # Nine such layers of 3500 bins with --neuron_counts=100,200,400,800: 675 models, the GPU
  # Stringer-scale run of docs/benchmarks.md.
  "stringer": _stringer,
}
PHASES = (
  "prepare",
  "compile",
  "training",
  "predictions",
  "baselines",
  "comparators",
  "estimates",
  "layer_decoding",
  "report",
)


def run(name: str, steps: int | None = None, workdir: str | None = None) -> dict:
  """Fits the named shape once; {"shape", "steps", "models", "phases": {phase: seconds},
  "total"}. `steps` caps training (None: every model to the convergence criterion)."""
  from nmas_jax import DimensionSweep

  data, kwargs = SHAPES[name](steps)
  est = DimensionSweep(**{k: v for k, v in kwargs.items() if v is not None})
  with tempfile.TemporaryDirectory() as tmp:  # the report is a phase: write it somewhere
    t0 = time.perf_counter()
    est.fit(data, workdir=workdir or tmp, overwrite=True)
    total = time.perf_counter() - t0
  r = est.results_
  return {
    "shape": name,
    "steps": max(m.get("stopped_at_step") or 0 for m in r["models"]),
    "models": len(r["models"]),
    "phases": {p: round(est.phase_seconds_[p], 2) for p in PHASES if p in est.phase_seconds_},
    "total": round(total, 2),
  }


def table(r: dict[str, Any]) -> str:
  """A Markdown table of one `run`: each phase's seconds and share of the total."""
  rows = [
    f"shape {r['shape']}: {r['models']} models, training to step {r['steps']} at most",
    "| phase | seconds | share |",
    "|---|---|---|",
  ]
  rows += [f"| {p} | {s:.1f} | {s / r['total']:.0%} |" for p, s in r["phases"].items()]
  other = r["total"] - sum(r["phases"].values())
  return "\n".join(rows + [f"| other | {other:.1f} | {other / r['total']:.0%} |"])
