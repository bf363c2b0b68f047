"""The dimension estimates of a sweep's held-out curves: the rule per layer with its bootstrap, the
band rule for latents per timescale, the neuron-count scaling, and the test-block comparison at
the chosen size."""

from __future__ import annotations

from typing import Any

import numpy as np

from nmas_jax.config import Settings
from nmas_jax.data.splits import Prepared
from nmas_jax.evaluation import dimension
from nmas_jax.evaluation.metrics import (
  block_losses,
  higher_is_better,
  score_metric,
)
from nmas_jax.training.table import ModelTable

BOOTSTRAP_SEED = 0


SATURATION_RULE = (
  "the chosen latent at the largest neuron count equals the one at the next largest count"
)


def scaling(
  prep: Prepared,
  cfg: Settings,
  by_count: dict[int, tuple[np.ndarray, dict]],
  null_LSB: np.ndarray,
  count_LSB: np.ndarray,
) -> dict[str, Any]:
  """results.json `scaling`: per layer and neuron count (the encoder's held-in inputs; 0 in
  `by_count` is all of them), the rule's choice and interval for the models and each baseline;
  the slope of log(chosen) against log(count), and whether the choice saturates."""
  held_in = int((~prep.heldout_SLN[0, 0]).sum())
  counts = sorted(by_count, key=lambda c: c or held_in)
  out: dict[str, Any] = {
    "counts": [c or held_in for c in counts],
    "saturates_when": SATURATION_RULE,
    "slope": "least-squares slope of log(chosen) on log(count), counts whose choice is above 0",
    "layers": {},
  }
  for l, name in enumerate(prep.dataset.layer_names):
    row: dict[str, Any] = {"chosen": [], "interval": [], **{m: [] for m in cfg.baselines}}
    for c in counts:
      curves, base = by_count[c]
      d = _rule(cfg, curves[l], null_LSB[l], count_LSB[l])
      row["chosen"].append(d["optimal"])
      row["interval"].append(d["interval"])
      for m in cfg.baselines:
        row[m].append(_rule(cfg, base[m][l], null_LSB[l], count_LSB[l])["optimal"])
    row["slope"] = log_slope(out["counts"], row["chosen"])
    row["saturates"] = len(counts) > 1 and row["chosen"][-1] == row["chosen"][-2]
    out["layers"][name] = row
  return out


def log_slope(counts, chosen) -> float | None:
  """Slope of log(chosen) on log(count) over the points with chosen > 0 (None under two)."""
  pts = [(np.log(n), np.log(k)) for n, k in zip(counts, chosen) if k and k > 0]
  if len(pts) < 2:
    return None
  x, y = np.array(pts).T
  return round(float(np.polyfit(x, y, 1)[0]), 3) + 0.0  # no -0.0


def _rule(
  cfg: Settings, curves_KSB: np.ndarray, null_SB: np.ndarray, count_SB: np.ndarray
) -> dict[str, Any]:
  """`dimension.estimate` on one layer's loss curves [latents in cfg order, seeds, blocks]."""
  sizes = baseline_sizes(cfg)
  order = np.argsort(sizes)
  return dimension.estimate(
    [int(sizes[j]) for j in order],
    curves_KSB[order],
    null_SB,
    count_SB,
    cfg.gain_fraction,
    cfg.bootstrap,
    BOOTSTRAP_SEED,
  )


def _estimate_fields(cfg: Settings, dim: dict[str, Any], bands: bool = False) -> dict[str, Any]:
  """results.json's estimate fields, empty per layer (with the per-band choice when `bands`)."""
  per_band = ["optimal_latent_bands", "optimal_latent_bands_interval"] if bands else []
  names = ["optimal_latent", "optimal_latent_interval", *per_band]
  names += ["knee_latent", "one_se_latent", "detectable_latent"]
  return {
    **{name: {} for name in names},
    "baseline_optimal_latent": {m: {} for m in cfg.baselines},
    "dimension": dim,
    "test_comparison": {},
  }


def dimension_estimates(
  prep: Prepared,
  cfg: Settings,
  table: ModelTable,
  per_model: list[dict[str, float]],
  model_curves: np.ndarray,
  base_curves: dict[str, np.ndarray],
  base_rows: list[dict[str, Any]],
  null_LSB: np.ndarray,
  count_LSB: np.ndarray,
) -> dict[str, Any]:
  """The rule (`dimension.estimate`) per layer on the models' and each baseline's gain curve."""
  metric = score_metric(prep.likelihood, True)
  order = np.argsort(cfg.latents)
  latents = [int(cfg.latents[j]) for j in order]
  g = cfg.gain_fraction
  dim: dict[str, Any] = {
    "metric": metric,
    "gain_fraction": g,
    "block": "validation",
    "gain": "drop of the held-out neurons' loss (squared error, or Poisson NLL) on the "
    "validation block below the zero-latent null (each neuron predicted by its "
    "training-block mean), per held-out element, mean over seeds",
    "rule": f"smallest latent whose gain reaches {g:.0%} of the gain of every larger latent "
    "swept; 0 unless the best gain is above zero in 95% of the bootstrap resamples",
    "bootstrap": _bootstrap_info(cfg, null_LSB),
    "layers": {},
  }
  out = _estimate_fields(cfg, dim)
  for l, name in enumerate(prep.dataset.layer_names):
    run = lambda curves: _rule(cfg, curves, null_LSB[l], count_LSB[l])
    d = run(model_curves[l])
    for key, field in (
      ("optimal_latent", "optimal"),
      ("optimal_latent_interval", "interval"),
      ("knee_latent", "knee"),
      ("one_se_latent", "one_se"),
      ("detectable_latent", "detectable"),
    ):
      out[key][name] = d[field]
    for method in cfg.baselines:
      out["baseline_optimal_latent"][method][name] = run(base_curves[method][l])["optimal"]
    values = [
      [
        m.get(metric)
        for i, m in enumerate(per_model)
        if table.layer[i] == l and table.latent[i] == k
      ]
      for k in latents
    ]
    dim["layers"][name] = {
      "latents": latents,
      "mean": [_mean(v) for v in values],
      "null": float(null_LSB[l].sum() / count_LSB[l].sum()),
      **{k: d[k] for k in ("gain", "gain_se", "gain_fraction", "interval", "p_positive")},
    }
    out["test_comparison"][name] = _test_comparison(
      prep, cfg, table, per_model, base_rows, l, name, d["optimal"]
    )
  return out


def _bootstrap_info(cfg: Settings, null_LSB: np.ndarray) -> dict[str, Any]:
  return {
    "resamples": cfg.bootstrap,
    "seed": BOOTSTRAP_SEED,
    "time_blocks": int(null_LSB.shape[-1]),
    "over": "validation time blocks and seeds",
  }


def _band_rule_info(cfg: Settings, metric: str, null_LSB: np.ndarray) -> dict[str, Any]:
  """results.json `dimension` of the band rule, before its per-layer entries."""
  g = cfg.gain_fraction
  return {
    "metric": metric,
    "gain_fraction": g,
    "block": "validation",
    "timescales": list(cfg.timescales),
    "gain": "drop of the held-out neurons' loss on the validation block below the zero-latent "
    "null, per held-out element, mean over seeds",
    "rule": f"smallest total latent count whose gain reaches {g:.0%} of the gain of every "
    "combination of per-band counts with a larger or equal total; among those, the "
    "slower explanation (most latents in the slowest band); 0 unless the best gain is "
    "above zero in 95% of the bootstrap resamples",
    "bootstrap": _bootstrap_info(cfg, null_LSB),
    "layers": {},
  }


def _band_curve(per_model, table: ModelTable, l: int, combos: np.ndarray, metric: str) -> dict:
  """Layer l's combinations of per-band counts, their totals and the models' mean `metric`."""
  mean = lambda c: _mean(
    [
      m.get(metric)
      for i, m in enumerate(per_model)
      if table.layer[i] == l and tuple(table.bands[i]) == tuple(c)
    ]
  )
  return {
    "bands": combos.tolist(),
    "latents": combos.sum(axis=1).tolist(),
    "mean": [mean(c) for c in combos],
  }


def band_estimates(
  prep: Prepared,
  cfg: Settings,
  table: ModelTable,
  per_model: list[dict[str, float]],
  pred_valid: np.ndarray,
  ok: np.ndarray,
  base_curves: dict[str, np.ndarray],
  null_LSB: np.ndarray,
  count_LSB: np.ndarray,
  block_T: np.ndarray,
) -> dict[str, Any]:
  """--model=multiscale: `dimension.estimate_bands` per layer over the combinations of per-band
  counts (`table.bands`): optimal_latent (the total), optimal_latent_bands, their intervals."""
  metric = score_metric(prep.likelihood, True)
  valid_LTN = prep.flat("valid")
  combos = np.unique(table.bands, axis=0)
  key = {tuple(c): j for j, c in enumerate(combos)}
  curves = np.full(
    (prep.dataset.num_layers, len(combos), cfg.heldout_sets, block_T.max() + 1), np.nan
  )
  for i in np.flatnonzero(ok):
    l, s = table.layer[i], table.seed[i]
    curves[l, key[tuple(table.bands[i])], s] = block_losses(
      pred_valid[i], valid_LTN[l], prep.heldout_SLN[s, l], prep.likelihood, block_T
    )
  g = cfg.gain_fraction
  dim = _band_rule_info(cfg, metric, null_LSB)
  out = _estimate_fields(cfg, dim, bands=True)
  for l, name in enumerate(prep.dataset.layer_names):
    d = dimension.estimate_bands(
      combos, curves[l], null_LSB[l], count_LSB[l], cfg.timescales, g, cfg.bootstrap, BOOTSTRAP_SEED
    )
    out["optimal_latent"][name], out["optimal_latent_interval"][name] = (
      d["total"],
      d["total_interval"],
    )
    out["optimal_latent_bands"][name] = d["optimal"]
    out["optimal_latent_bands_interval"][name] = d["interval"]
    out["knee_latent"][name] = out["one_se_latent"][name] = None
    out["detectable_latent"][name] = None
    for method in cfg.baselines:
      out["baseline_optimal_latent"][method][name] = _rule(
        cfg, base_curves[method][l], null_LSB[l], count_LSB[l]
      )["optimal"]
    dim["layers"][name] = {
      **_band_curve(per_model, table, l, combos, metric),
      "null": float(null_LSB[l].sum() / count_LSB[l].sum()),
      **{k: d[k] for k in ("gain", "gain_fraction", "p_positive")},
    }
    test = "test_" + metric
    at = [
      m.get(test)
      for i, m in enumerate(per_model)
      if table.layer[i] == l and list(table.bands[i]) == d["optimal"]
    ]
    out["test_comparison"][name] = {
      "latent": d["total"],
      "bands": d["optimal"],
      "metric": test,
      "higher_is_better": higher_is_better(test),
      "model": _mean(at) if d["total"] else None,
    }
  return out


def _test_comparison(
  prep: Prepared, cfg: Settings, table: ModelTable, per_model, base_rows, l: int, name: str, k: int
) -> dict[str, Any]:
  """The model against each baseline at latent k on the test block (means over seeds)."""
  metric = "test_" + score_metric(prep.likelihood, True)
  if not k:
    return {"latent": k, "metric": metric, "model": None}
  row = next(r for r in base_rows if r["layer"] == name and r["latent"] == k)
  at_k = lambda key: _mean(
    [m.get(key) for i, m in enumerate(per_model) if table.layer[i] == l and table.latent[i] == k]
  )
  out = {
    "latent": int(k),
    "metric": metric,
    "higher_is_better": higher_is_better(metric),
    "model": at_k(metric),
    **{m: row.get(f"{m}_{metric}") for m in cfg.baselines},
  }
  if prep.dataset.rates_LTN is not None:
    out["test_rates_r2"] = at_k("test_rates_r2")
  return out


def _mean(values) -> float | None:
  v = [x for x in values if x is not None and np.isfinite(x)]
  return float(np.mean(v)) if v else None


def _no_estimate(
  prep: Prepared, cfg: Settings, table: ModelTable, out, per_model
) -> dict[str, Any]:
  """Results fields when no neuron is held out: the curves, and no chosen dimension."""
  metric = score_metric(prep.likelihood, False)
  latents = sorted(int(k) for k in cfg.latents)
  names = prep.dataset.layer_names
  dim = {
    "metric": metric,
    "rule": "none: no neurons are held out (--heldout_neurons=0)",
    "layers": {
      n: {
        "latents": latents,
        "mean": [
          _mean(
            [
              m.get(metric)
              for i, m in enumerate(per_model)
              if table.layer[i] == l and table.latent[i] == k
            ]
          )
          for k in latents
        ],
      }
      for l, n in enumerate(names)
    },
  }
  none = {n: None for n in names}
  return {
    "optimal_latent": none,
    "optimal_latent_interval": dict(none),
    "knee_latent": dict(none),
    "one_se_latent": dict(none),
    "detectable_latent": dict(none),
    "baseline_optimal_latent": {m: dict(none) for m in cfg.baselines},
    "dimension": dim,
  }


def by_decoder(cfg: Settings, first: dict[str, Any], estimate) -> dict[str, Any]:
  """optimal_latent_by_decoder and its interval's: `first` holds the first decoder's estimates,
  `estimate(d)` gives decoder d's (none for a family without a decoder)."""
  keys = ("optimal_latent", "optimal_latent_interval")
  out: dict[str, Any] = {f"{k}_by_decoder": {} for k in keys} if cfg.decoders else {}
  for d, kind in enumerate(cfg.decoders):
    est = estimate(d) if d else first
    for k in keys:
      out[f"{k}_by_decoder"][kind] = dict(est[k])
  return out


def baseline_sizes(cfg: Settings) -> tuple[int, ...]:
  """The latent sizes the baselines (and the rule on their curves) use: --latents without 0 (a
  band count of --model=multiscale)."""
  return tuple(k for k in cfg.latents if k > 0)
