"""Validation over fresh draws (`python -m experiments.validate --draws=N`).

Every family is drawn N times with data seeds VALIDATION_SEED, VALIDATION_SEED + 1, ... (a
range reserved for validation: no default was chosen on it), swept once with every decoder of
`--decoders` as one batched axis, and scored per family, decoder and layer: the accuracy (share
of draws whose answer is the smallest grid latent at or above the truth), the interval's
coverage (share of draws whose 5-95% interval holds that grid value), the interval's mean width
in grid steps, the same accuracy for PCA, FA and every standard estimator
(`evaluation.comparators`, mapped to the smallest grid latent at or above it), and the oracle
(the rule on the noiseless signal's best rank-k summary, `dimension.oracle_gains`: what this
rule would answer knowing the signal; a linear reference).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import numpy as np

VALIDATION_SEED = 1000  # first data seed of the validation draws; tuning used 100-199

# One grid per family: unit steps around small truths, neither starting at the truth.
GRIDS = {
  "synthetic": (10, 25, 50, 75, 150),
  "linear_gaussian": (5, 8, 12, 20, 30, 45),
  "nonlinear": (1, 2, 3, 4, 5, 6, 8, 12, 16),
  "lorenz": (1, 2, 3, 4, 5, 6, 8),
  "lorenz_whitened": (1, 2, 3, 4, 5, 6, 8),
  "independent": (1, 2, 4, 8),
  "ring": (1, 2, 3, 4, 5, 6, 8),
  "torus": (1, 2, 3, 4, 5, 6, 8),
  "sequence": (1, 2, 3, 4, 5, 6, 8),
  "calcium": (1, 2, 3, 4, 5, 6, 7, 8, 10, 12),
}
# Curved families: their linear dimension exceeds the truth, so only a nonlinear decoder has an
# expected answer.
CURVED = ("synthetic", "nonlinear", "ring", "torus", "sequence", "calcium")
# With the MLP decoder, a second defensible answer beside the truth: the dimension of Lorenz's
# attractor rounded (2), the torus's flat embedding (4).
EITHER = {"lorenz": 2, "lorenz_whitened": 2, "torus": 4}


def make(family: str, seed: int):
  """The family's dataset drawn with data seed `seed`."""
  from nmas_jax.data import lorenz, synthetic

  if family == "lorenz_whitened":
    return lorenz.make_lorenz(whiten=True, seed=seed)
  return synthetic.FAMILIES[family](seed=seed)


def on_grid(value, grid) -> int | None:
  """The smallest grid latent at or above `value` rounded (0 for 0; the largest above it)."""
  if value is None:
    return None
  v = int(round(float(value)))
  return 0 if v <= 0 else min([k for k in grid if k >= v] or [max(grid)])


def expected(family: str, decoder: str, truth: int, grid) -> tuple[int, ...]:
  """The grid answers counted right: the smallest grid latent at or above the truth (either of
  two truths where the family has two defensible ones); () where none is expected."""
  if truth == 0:
    return (0,)
  if family in CURVED and decoder == "linear":
    return ()
  truths = (truth, EITHER[family]) if decoder == "mlp" and family in EITHER else (truth,)
  return tuple(sorted({on_grid(t, grid) for t in truths}))


def run_draw(family: str, decoders, seed: int, log) -> list[dict]:
  """One draw of one family swept with every decoder: a row per (decoder, layer)."""
  from nmas_jax import DimensionSweep
  from nmas_jax.evaluation import consistency, dimension

  grid = GRIDS[family]
  ds = make(family, seed)
  t0 = time.perf_counter()
  est = DimensionSweep(latents=grid, decoder=",".join(decoders), verbose=False)
  r = est.fit(ds, data_seed=seed).results_
  seconds = round(time.perf_counter() - t0)
  rows = []
  for li, layer in enumerate(r["layers"]):
    truth = ds.true_latent[layer]
    oracle = None
    if ds.rates_LTN is not None:
      gains = dimension.oracle_gains(ds.x_LTN[li], ds.rates_LTN[li], grid, ds.counts)
      oracle = int(dimension.choose(grid, gains))
    comp = (r.get("comparators") or {}).get(layer, {})
    curve = (r.get("consistency") or {}).get(layer, {})
    for decoder in decoders:
      lo, hi = r["optimal_latent_interval_by_decoder"][decoder][layer]
      chosen = r["optimal_latent_by_decoder"][decoder][layer]
      rows.append(
        dict(
          family=family,
          decoder=decoder,
          layer=layer,
          truth=truth,
          seed=seed,
          expected=expected(family, decoder, truth, grid),
          chosen=chosen,
          interval=(lo, hi),
          # The few-shot guard, of the first decoder's models (those `consistency` scores).
          guarded=consistency.guarded(curve, chosen) if decoder == decoders[0] else None,
          pca=r["baseline_optimal_latent"]["pca"][layer],
          fa=r["baseline_optimal_latent"]["fa"][layer],
          oracle=oracle,
          comparators={k: on_grid(v, grid) for k, v in comp.items()},
          unconverged=sum(
            m.get("converged") is False
            for m in r["models"]
            if m["layer"] == layer and m.get("decoder", decoder) == decoder
          ),
          seconds=seconds,
        )
      )
      log(" | ".join(f"{k}={v}" for k, v in rows[-1].items()))
  return rows


def _share(values) -> str:
  v = [x for x in values if x is not None]
  return "-" if not v else f"{np.mean(v):.2f}"


def summary(rows: list[dict]) -> str:
  """The markdown table: a row per (family, decoder, layer) over its draws."""
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for r in rows:
    groups[(r["family"], r["decoder"], r["layer"])].append(r)
  names = sorted({k for r in rows for k in r["comparators"]})
  cols = ["family", "decoder", "layer", "truth", "expected", "draws", "accuracy", "coverage"]
  cols += ["width", "oracle", "unconverged", "guarded", "pca", "fa", *names]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for (family, decoder, layer), rs in groups.items():
    want = rs[0]["expected"]
    grid = GRIDS[family]
    right = lambda k: None if not want else float(k in want)
    pos = lambda k: -1 if k == 0 else grid.index(k)  # 0: one step below the grid
    width = [pos(r["interval"][1]) - pos(r["interval"][0]) for r in rs if None not in r["interval"]]
    cells = dict(
      family=family,
      decoder=decoder,
      layer=layer,
      truth=rs[0]["truth"],
      expected=" or ".join(map(str, want)) or "-",
      draws=len(rs),
      accuracy=_share(right(r["chosen"]) for r in rs),
      coverage=_share(
        None
        if not want or None in r["interval"]
        else float(any(r["interval"][0] <= w <= r["interval"][1] for w in want))
        for r in rs
      ),
      width=f"{np.mean(width):.1f}" if width else "-",
      oracle=",".join(str(r["oracle"]) for r in rs) if rs[0]["oracle"] is not None else "-",
      unconverged=sum(r["unconverged"] for r in rs),
      guarded=_share(right(r["guarded"]) if r.get("guarded") is not None else None for r in rs),
      pca=_share(right(r["pca"]) for r in rs),
      fa=_share(right(r["fa"]) for r in rs),
      **{n: _share(right(r["comparators"].get(n)) for r in rs) for n in names},
    )
    lines.append("| " + " | ".join(str(cells[c]) for c in cols) + " |")
  return "\n".join(lines)


def refresh_comparators(rows_path: str, log) -> None:
  """Recomputes the standard estimators of every draw in `rows_path` on its regenerated data
  (they depend on the data alone, not on training), rewriting the file: for a change to
  `evaluation.comparators` without rerunning the sweeps."""
  from nmas_jax.config import Settings
  from nmas_jax.data import splits
  from nmas_jax.evaluation import comparators

  with open(rows_path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  fresh = {}
  for family, seed in sorted({(r["family"], r["seed"]) for r in rows}):
    prep = splits.prepare(make(family, seed), Settings(latents=GRIDS[family]), data_seed=seed)
    fresh[family, seed] = comparators.per_layer(prep)
    log(f"{family} draw {seed}: {fresh[family, seed]}")
  for r in rows:
    comp = fresh[r["family"], r["seed"]][r["layer"]]
    r["comparators"] = {k: on_grid(v, GRIDS[r["family"]]) for k, v in comp.items()}
  tmp = rows_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(tmp, rows_path)


def run(
  families, decoders, draws: int, log, rows_path: str = "", only_rows: bool = False
) -> list[dict]:
  """Every family on `draws` fresh draws (data seeds from VALIDATION_SEED), with the decoders
  of `decoders` that have an expected answer on it (a curved family: not the linear one).

  With `rows_path`, each finished draw's rows are appended there (JSON lines) and draws already
  there are not run again, so a long validation can be resumed or extended; `only_rows` runs
  nothing (the table of what the file holds)."""
  done = []
  if rows_path and os.path.exists(rows_path):
    with open(rows_path, encoding="utf-8") as f:
      done = [json.loads(line) for line in f if line.strip()]
  for r in done:
    r["expected"], r["interval"] = tuple(r["expected"]), tuple(r["interval"])
  rows = [r for r in done if r["family"] in families and r["seed"] < VALIDATION_SEED + draws]
  have = {(r["family"], r["seed"]) for r in rows}
  for i in range(0 if only_rows else draws):
    for family in families:
      if (family, VALIDATION_SEED + i) in have:
        continue
      mine = [d for d in decoders if not (family in CURVED and d == "linear")] or decoders
      new = run_draw(family, mine, VALIDATION_SEED + i, log)
      rows += new
      if rows_path:
        with open(rows_path, "a", encoding="utf-8") as f:
          f.writelines(json.dumps(r) + "\n" for r in new)
  return rows
