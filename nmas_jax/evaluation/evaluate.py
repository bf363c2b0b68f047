"""Held-out evaluation that makes a dimensionality claim checkable.

Metrics on the held-out time block: MSE and R2 over all neurons, and
co-smoothing (as in the Neural Latents Benchmark): held-out neurons, never
shown to the encoder, predicted at held-out times. PCA and FA baselines at
the same latent sizes and splits. Then a dimension estimate per layer
(`dimension.choose_dimension`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import models
from nmas_jax.config import Settings
from nmas_jax.data.splits import Prepared
from nmas_jax.evaluation import baselines, dimension, lds, spectrum
from nmas_jax.training import train
from nmas_jax.training.hooks import fmt_time
from nmas_jax.training.table import ModelTable

# ----------------------------------------------------------------------------
# Metrics on one [time, neurons] block.


def neuron_r2(pred_TN: np.ndarray, x_TN: np.ndarray) -> np.ndarray:
  """Per-neuron fraction of variance explained [N]; NaN for neurons constant in x."""
  sst = ((x_TN - x_TN.mean(axis=0)) ** 2).sum(axis=0)
  sse = ((x_TN - pred_TN) ** 2).sum(axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(sst > 0, 1.0 - sse / sst, np.nan)


def pooled_r2(pred_TN: np.ndarray, x_TN: np.ndarray) -> float:
  """1 - total squared error / total variance (neurons pooled)."""
  sst = ((x_TN - x_TN.mean(axis=0)) ** 2).sum()
  return float(1.0 - ((x_TN - pred_TN) ** 2).sum() / sst) if sst > 0 else float("nan")


def rates_r2(pred_TN: np.ndarray, rates_TN: np.ndarray) -> float:
  """The LFADS paper's measure: R2 of the inferred rates (or means) against the true ones, per
  neuron, averaged over all neurons (held in and held out)."""
  return float(np.nanmean(neuron_r2(pred_TN, rates_TN)))


def poisson_nll(rate_TN: np.ndarray, x_TN: np.ndarray) -> float:
  """Summed Poisson negative log-likelihood, without the log(x!) constant."""
  rate = np.maximum(rate_TN, 1e-9)
  return float((rate - x_TN * np.log(rate)).sum())


def bits_per_spike(rate_TN: np.ndarray, x_TN: np.ndarray) -> float:
  """NLB bits/spike: (NLL of each neuron's mean rate - NLL of the model) / spikes / ln 2."""
  spikes = x_TN.sum()
  if spikes <= 0:
    return float("nan")
  null = np.broadcast_to(x_TN.mean(axis=0), x_TN.shape)
  return float((poisson_nll(null, x_TN) - poisson_nll(rate_TN, x_TN)) / spikes / np.log(2))


def loss_elements(pred_TN: np.ndarray, x_TN: np.ndarray, likelihood: str) -> np.ndarray:
  """Each element's loss in the likelihood's units: squared error, or Poisson NLL (no log x!)."""
  if likelihood == "poisson":
    rate = np.maximum(pred_TN, 1e-9)
    return rate - x_TN * np.log(rate)
  return (pred_TN - x_TN) ** 2


def block_metrics(
  pred_TN: np.ndarray,
  x_TN: np.ndarray,
  heldout_N: np.ndarray,
  likelihood: str,
  block: str = "valid",
) -> dict[str, float]:
  """Metrics of one prediction (means / rates) against data x [time, neurons] of a time block.

  Names: all neurons `valid_mse`, `valid_r2`, ...; held-out neurons `cosmooth_mse`, ...; on
  the test block the same with `test_` (`test_mse`, `test_cosmooth_mse`, ...).
  """
  whole = "valid" if block == "valid" else block
  held = "cosmooth" if block == "valid" else f"{block}_cosmooth"
  m = {
    f"{whole}_mse": float(np.mean((pred_TN - x_TN) ** 2)),
    f"{whole}_r2": float(np.nanmean(neuron_r2(pred_TN, x_TN))),
    f"{whole}_r2_pooled": pooled_r2(pred_TN, x_TN),
  }
  if likelihood == "poisson":
    m[f"{whole}_bps"] = bits_per_spike(pred_TN, x_TN)
  if heldout_N.any():
    p, x = pred_TN[:, heldout_N], x_TN[:, heldout_N]
    m.update(
      {
        f"{held}_mse": float(np.mean((p - x) ** 2)),
        f"{held}_r2": float(np.nanmean(neuron_r2(p, x))),
        f"{held}_r2_pooled": pooled_r2(p, x),
      }
    )
    if likelihood == "poisson":
      m[f"{held}_bps"] = bits_per_spike(p, x)
  return m


def score_metric(likelihood: str, heldout: bool) -> str:
  """The headline metric of the curves (co-smoothing when neurons are held out)."""
  prefix = "cosmooth" if heldout else "valid"
  return f"{prefix}_{'bps' if likelihood == 'poisson' else 'mse'}"


def higher_is_better(metric: str) -> bool:
  return metric.endswith("_bps") or "_r2" in metric


def bootstrap_blocks(num_time: int, blocks: int = 20) -> np.ndarray:
  """[num_time] block index of each time bin: `blocks` contiguous blocks (fewer for short data)."""
  return np.minimum(np.arange(num_time) * min(blocks, num_time) // num_time, blocks - 1)


def block_losses(
  pred_TN: np.ndarray, x_TN: np.ndarray, heldout_N: np.ndarray, likelihood: str, block_T: np.ndarray
) -> np.ndarray:
  """Held-out neurons' loss summed within each time block [blocks]."""
  per_t = loss_elements(pred_TN[:, heldout_N], x_TN[:, heldout_N], likelihood).sum(axis=1)
  return np.bincount(block_T, weights=per_t, minlength=block_T.max() + 1)


# ----------------------------------------------------------------------------
# A whole sweep.

BOOTSTRAP_SEED = 0


def model_predictions(
  state: train.TrainState, table: ModelTable, prep: Prepared, cfg: Settings, block: str = "valid"
) -> np.ndarray:
  """Every model's predicted means on a time block: [models, time, neurons]."""
  windows_LVWN = jnp.asarray(prep.windows_LVTN(block))
  mask_MN = jnp.asarray(prep.input_mask_MN(table.layer, table.seed, table.count))
  pred = functools.partial(train.predict, model=models.make_model(cfg, prep.num_neurons))

  @jax.jit
  def one(params, latent, layer, mask_N):
    y_VWN, _ = pred(params, latent, windows_LVWN[layer], mask_N)
    return models.mean_prediction(y_VWN, prep.likelihood).reshape(-1, y_VWN.shape[-1])

  return np.stack(
    [
      np.asarray(
        one(
          jax.tree.map(lambda a: a[i], state.params),
          state.latent[i],
          int(table.layer[i]),
          mask_MN[i],
        )
      )
      for i in range(len(table))
    ]
  ).astype(np.float64)


LDS_ITERS = 20  # EM iterations of the linear dynamical system baseline


class Progress:
  """Progress lines of a long phase: `done/total what, elapsed, ETA`, at most one per `every_s`
  seconds and one at the end (at Stringer scale the baselines take minutes after training)."""

  def __init__(self, what: str, total: int, log: Callable[[str], Any], every_s: float = 10.0):
    self.what, self.total, self.log, self.every_s = what, total, log, every_s
    self.done, self.start = 0, time.perf_counter()
    self.last = self.start

  def step(self) -> None:
    self.done += 1
    now = time.perf_counter()
    if now - self.last < self.every_s and self.done < self.total:
      return
    self.last, elapsed = now, now - self.start
    eta = elapsed / self.done * (self.total - self.done)
    self.log(
      f"  {self.done}/{self.total} {self.what}, {fmt_time(elapsed)}"
      + (f", ETA {fmt_time(eta)}" if self.done < self.total else "")
    )


def _baselines(
  prep: Prepared,
  cfg: Settings,
  block_T: np.ndarray,
  fa_iters: int,
  count: int = 0,
  progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[tuple[int, int], tuple]]:
  """The baselines of `cfg.baselines` per (layer, latent): rows of metrics (means over seeds),
  their loss curves {method: [layers, latents, seeds, blocks]} on each seed's held-out neurons,
  and the all-neuron FA fits {(layer, latent): (mean, W, psi)} for `context`. With `count`, each
  seed's baselines see only its --neuron_counts subset of held-in neurons (and no rows' all-neuron
  reconstruction)."""
  train_LTN, valid_LTN, test_LTN = prep.train_block(), prep.flat("valid"), prep.flat("test")
  t_valid, lik, seeds = valid_LTN.shape[1], prep.likelihood, prep.heldout_SLN.shape[0]
  methods, sizes = cfg.baselines, baseline_sizes(cfg)
  shape = (prep.dataset.num_layers, len(sizes), seeds, block_T.max() + 1)
  curves = {m: np.full(shape, np.nan) for m in methods}
  rows, fa_fits = [], {}
  for l, name in enumerate(prep.dataset.layer_names):
    held_x = np.concatenate([valid_LTN[l], test_LTN[l]])
    # Each seed's neurons the baselines see: its held-out ones and its count's inputs.
    keep_SN = prep.heldout_SLN[:, l] | (
      prep.input_mask_MN(np.full(seeds, l), np.arange(seeds), np.full(seeds, count)) > 0
    )
    for j, k in enumerate(sizes):
      row: dict[str, Any] = {"layer": name, "latent": int(k)}
      per_seed = []
      for s in range(seeds):
        held, keep = prep.heldout_SLN[s, l], keep_SN[s]
        p = baselines.predictions(
          train_LTN[l][:, keep],
          held_x[:, keep],
          held[keep],
          k,
          fa_iters,
          reconstruct=s == 0 and not count,
          methods=methods,
        )
        if count:
          p = {key: _widen(v, keep) for key, v in p.items()}
        if "fa_fit" in p:
          fa_fits[l, int(k)] = p.pop("fa_fit")
        if "lds" in methods and held.any():
          p["lds_cosmooth"] = _widen(
            lds.cosmooth(train_LTN[l][:, keep], held[keep], [held_x[:, keep]], k, LDS_ITERS)[0],
            keep,
          )
        m: dict[str, float] = {}
        for method in methods:
          if s == 0 and method in p:
            rec = block_metrics(p[method][:t_valid], valid_LTN[l], np.zeros_like(held), lik)
            row[f"{method}_valid_mse"], row[f"{method}_valid_r2"] = (
              rec["valid_mse"],
              rec["valid_r2"],
            )
          if held.any():
            pc = p[f"{method}_cosmooth"]
            if lik == "poisson":
              pc = np.maximum(pc, 1e-3)  # linear predictions can go negative: floor the rate.
            for block, x in (("valid", valid_LTN[l]), ("test", test_LTN[l])):
              part = pc[:t_valid] if block == "valid" else pc[t_valid:]
              mc = block_metrics(part, x, held, lik, block)
              m.update({f"{method}_{key}": v for key, v in mc.items() if "cosmooth" in key})
            curves[method][l, j, s] = block_losses(pc[:t_valid], valid_LTN[l], held, lik, block_T)
        per_seed.append(m)
      for key in per_seed[0]:
        row[key] = float(np.nanmean([m[key] for m in per_seed]))
      rows.append(row)
    if progress is not None:
      progress.step()
  return rows, curves, fa_fits


def baseline_sizes(cfg: Settings) -> tuple[int, ...]:
  """The latent sizes the baselines (and the rule on their curves) use: --latents without 0 (a
  band count of --model=multiscale)."""
  return tuple(k for k in cfg.latents if k > 0)


def _widen(pred_TK: np.ndarray, keep_N: np.ndarray) -> np.ndarray:
  """Predictions of the kept neurons [T, kept] as [T, neurons], NaN elsewhere."""
  if keep_N.all():
    return pred_TK
  out = np.full((len(pred_TK), len(keep_N)), np.nan)
  out[:, keep_N] = pred_TK
  return out


def _null_losses(prep: Prepared, block_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The zero-latent null's held-out loss and element count per validation block:
  [layers, seeds, blocks] each (each neuron predicted by its training-block mean)."""
  train_LTN, valid_LTN = prep.train_block(), prep.flat("valid")
  seeds, layers = prep.heldout_SLN.shape[:2]
  null = np.zeros((layers, seeds, block_T.max() + 1))
  count = np.zeros_like(null)
  for l in range(layers):
    pred = np.broadcast_to(train_LTN[l].mean(axis=0), valid_LTN[l].shape)
    for s in range(seeds):
      held = prep.heldout_SLN[s, l]
      null[l, s] = block_losses(pred, valid_LTN[l], held, prep.likelihood, block_T)
      count[l, s] = np.bincount(block_T, minlength=block_T.max() + 1) * held.sum()
  return null, count


def evaluate_sweep(
  prep: Prepared, cfg: Settings, out, fa_iters: int = 100, log=print
) -> dict[str, Any]:
  """Full evaluation of a `sweep.SweepOutput` on the validation and test blocks, the PCA and FA
  baselines, and the dimension estimates: the fields of results.json."""
  table, lik = out.table, prep.likelihood
  valid_LTN, test_LTN = prep.flat("valid"), prep.flat("test")
  block_T = bootstrap_blocks(valid_LTN.shape[1])
  pred_valid = model_predictions(out.state, table, prep, cfg, "valid")
  pred_test = model_predictions(out.state, table, prep, cfg, "test")
  held = lambda i: prep.heldout_SLN[table.seed[i], table.layer[i]]
  per_model = [
    {
      **block_metrics(pred_valid[i], valid_LTN[l], held(i), lik, "valid"),
      **block_metrics(pred_test[i], test_LTN[l], held(i), lik, "test"),
    }
    for i, l in enumerate(table.layer)
  ]
  rates_valid, rates_test = prep.flat("valid", rates=True), prep.flat("test", rates=True)
  if rates_valid is not None:  # generated data: the inferred rates against the true ones
    for i, l in enumerate(table.layer):
      per_model[i]["rates_r2"] = rates_r2(pred_valid[i], rates_valid[l])
      per_model[i]["test_rates_r2"] = rates_r2(pred_test[i], rates_test[l])
  log(
    f"baselines: {', '.join(m.upper() for m in cfg.baselines) or 'none'} at "
    f"{len(baseline_sizes(cfg))} "
    f"latent sizes x {prep.dataset.num_layers} layers x {cfg.heldout_sets} held-out sets"
  )
  counts = cfg.neuron_counts if cfg.neuron_counts and not prep.shared else ()
  progress = Progress(
    "layers' baselines" + (" (all counts)" if counts else ""),
    prep.dataset.num_layers * (1 + len(counts)),
    log,
  )
  rows, base_curves, fa_fits = _baselines(prep, cfg, block_T, fa_iters, progress=progress)
  train_LTN, names = prep.train_block(), prep.dataset.layer_names
  t0 = time.perf_counter()
  ctx = context(prep, cfg, fa_iters, fa_fits)
  log(f"spectrum and FA's shared dimension: {fmt_time(time.perf_counter() - t0)}")
  result = {
    "per_model": per_model,
    "baselines": rows,
    "participation_ratio": {
      n: round(baselines.participation_ratio(train_LTN[l]), 3) for l, n in enumerate(names)
    },
    "pca_dims_90": {n: baselines.dims_for_variance(train_LTN[l], 0.9) for l, n in enumerate(names)},
    **ctx,
  }
  main = np.flatnonzero(table.count == 0)  # every held-in neuron; the rest: --neuron_counts
  sub, sub_per_model = table.take(main), [per_model[i] for i in main]
  if not prep.cosmooth:
    log(
      "warning: no neurons are held out (--heldout_neurons=0): reconstruction error keeps "
      "falling with the latent size and is not a dimension estimate, so none is reported"
    )
    return {**result, **_no_estimate(prep, cfg, sub, out, sub_per_model)}
  ok = np.asarray(out.state.diverged_at) < 0

  def model_curves(c: int) -> np.ndarray:
    """[layers, latents, seeds, blocks] of the models of count c."""
    curves = np.full((len(names), len(cfg.latents), cfg.heldout_sets, block_T.max() + 1), np.nan)
    for i in np.flatnonzero(ok & (table.count == c)):
      l, j, s = table.layer[i], cfg.latents.index(int(table.latent[i])), table.seed[i]
      curves[l, j, s] = block_losses(pred_valid[i], valid_LTN[l], held(i), lik, block_T)
    return curves

  null, count = _null_losses(prep, block_T)
  if table.bands.shape[1]:  # a latent size per band: the rule over band combinations
    result.update(
      band_estimates(
        prep, cfg, sub, sub_per_model, pred_valid[main], ok[main], base_curves, null, count, block_T
      )
    )
    return result
  result.update(
    dimension_estimates(
      prep, cfg, sub, sub_per_model, model_curves(0), base_curves, rows, null, count
    )
  )
  if cfg.neuron_counts and not prep.shared:
    log(f"neuron counts: baselines at {len(cfg.neuron_counts)} more counts")
    by_count = {
      c: (model_curves(c), _baselines(prep, cfg, block_T, fa_iters, c, progress)[1])
      for c in cfg.neuron_counts
    }
    by_count[0] = (model_curves(0), base_curves)
    result["scaling"] = scaling(prep, cfg, by_count, null, count)
  return result


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


def context(
  prep: Prepared,
  cfg: Settings,
  fa_iters: int = 100,
  fa_fits: dict[tuple[int, int], tuple] | None = None,
) -> dict[str, Any]:
  """Dimensionality beside the models': each layer's reliable-variance spectrum (SVCA: fitted on
  the training block, measured on validation and test time) and FA's shared dimension (reusing
  the FA baseline's all-neuron fits {(layer, latent): (mean, W, psi)} where given)."""
  fa_fits = fa_fits or {}
  train_LTN, valid_LTN = prep.train_block(), prep.flat("valid")
  held_LTN = np.concatenate([valid_LTN, prep.flat("test")], axis=1)
  names = prep.dataset.layer_names
  return {
    "spectrum": {
      n: spectrum.spectrum(train_LTN[l], held_LTN[l], seed=l, bootstrap=cfg.bootstrap)
      for l, n in enumerate(names)
    },
    "fa_dshared": {
      n: spectrum.fa_dshared(
        train_LTN[l],
        valid_LTN[l],
        cfg.latents,
        fa_iters,
        fits={k: f[1:] for (ll, k), f in fa_fits.items() if ll == l},
      )
      for l, n in enumerate(names)
    },
  }


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


def baseline_choices(
  prep: Prepared, cfg: Settings, fa_iters: int = 100
) -> dict[str, dict[str, int]]:
  """{method: {layer: chosen latent}}: the dimension rule on each baseline of `cfg.baselines`
  alone, with no model trained (needs held-out neurons)."""
  if not prep.cosmooth:
    raise ValueError("baseline_choices needs held-out neurons (heldout_neurons > 0)")
  block_T = bootstrap_blocks(prep.flat("valid").shape[1])
  _, curves, _ = _baselines(prep, cfg, block_T, fa_iters)
  null, count = _null_losses(prep, block_T)
  return {
    m: {
      n: _rule(cfg, curves[m][l], null[l], count[l])["optimal"]
      for l, n in enumerate(prep.dataset.layer_names)
    }
    for m in cfg.baselines
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
  out: dict[str, Any] = {
    "optimal_latent": {},
    "optimal_latent_interval": {},
    "knee_latent": {},
    "one_se_latent": {},
    "detectable_latent": {},
    "baseline_optimal_latent": {m: {} for m in cfg.baselines},
    "dimension": dim,
    "test_comparison": {},
  }
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
  dim: dict[str, Any] = {
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
  out: dict[str, Any] = {
    "optimal_latent": {},
    "optimal_latent_interval": {},
    "optimal_latent_bands": {},
    "optimal_latent_bands_interval": {},
    "knee_latent": {},
    "one_se_latent": {},
    "detectable_latent": {},
    "baseline_optimal_latent": {m: {} for m in cfg.baselines},
    "dimension": dim,
    "test_comparison": {},
  }
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
      "bands": combos.tolist(),
      "latents": combos.sum(axis=1).tolist(),
      "mean": [
        _mean(
          [
            m.get(metric)
            for i, m in enumerate(per_model)
            if table.layer[i] == l and tuple(table.bands[i]) == tuple(c)
          ]
        )
        for c in combos
      ],
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


def chosen_gain(
  prep: Prepared, cfg: Settings, state: train.TrainState, table: ModelTable, chosen: list[int]
) -> float:
  """Held-out gain per element over the null on the validation block at each layer's `chosen`
  latent (0 where it is 0), mean over layers and seeds: `DimensionSweep.score` on new data."""
  valid_LTN = prep.flat("valid")
  block_T = bootstrap_blocks(valid_LTN.shape[1])
  null, count = _null_losses(prep, block_T)
  preds = model_predictions(state, table, prep, cfg, "valid")
  per_layer = []
  for l, k in enumerate(chosen):
    gains = [0.0]
    if k:
      gains = []
      for i in np.flatnonzero((table.layer == l) & (table.latent == k) & (table.count == 0)):
        s = table.seed[i]
        loss = block_losses(
          preds[i], valid_LTN[l], prep.heldout_SLN[s, l], prep.likelihood, block_T
        )
        gains.append((null[l, s].sum() - loss.sum()) / count[l, s].sum())
    per_layer.append(np.mean(gains))
  return float(np.mean(per_layer))
