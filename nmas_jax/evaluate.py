"""Held-out evaluation that makes a dimensionality claim checkable.

Metrics on the held-out time block: MSE and R2 over all neurons, and
co-smoothing (as in the Neural Latents Benchmark): held-out neurons, never
shown to the encoder, predicted at held-out times. PCA and FA baselines at
the same latent sizes and splits. Then a dimension estimate per layer.

The default estimate (`optimal_latent`) is the smallest latent size that
reaches `gain_fraction` (default 0.95) of the best held-out gain, the gain
measured from the smallest latent swept; if the smallest latent already
reaches that fraction of the gain over a zero-latent model (each neuron
predicted by its training mean), it is chosen. It is reported beside the
one-SE rule and the knee, each with the metric it used.

Why not the one-SE rule: with enough data, larger latents keep gaining a
little more than the seed-to-seed SE, so one-SE drifts to the largest latent
although the bulk of the gain was reached long before (the Lorenz prototype in
tests/test_evaluate.py: one-SE picks 12, the gain rule 3). Why the gain from the
smallest latent and not from zero: one latent already captures the shared
population rate (on Poisson Lorenz data one latent gives ~80% of the
bits/spike of the best), which would make a too-small latent look good enough.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import baselines, train
from nmas_jax import data as data_lib
from nmas_jax import sweep as sweep_lib

DEFAULT_GAIN_FRACTION = 0.95


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


def block_metrics(pred_TN: np.ndarray, x_TN: np.ndarray, heldout_N: np.ndarray,
                  likelihood: str) -> dict[str, float]:
  """Held-out-time metrics of one prediction (means / rates) against data x [time, neurons]."""
  m = {"valid_mse": float(np.mean((pred_TN - x_TN) ** 2)),
       "valid_r2": float(np.nanmean(neuron_r2(pred_TN, x_TN))),
       "valid_r2_pooled": pooled_r2(pred_TN, x_TN)}
  if likelihood == "poisson":
    m["valid_bps"] = bits_per_spike(pred_TN, x_TN)
  if heldout_N.any():
    p, x = pred_TN[:, heldout_N], x_TN[:, heldout_N]
    m.update(cosmooth_mse=float(np.mean((p - x) ** 2)),
             cosmooth_r2=float(np.nanmean(neuron_r2(p, x))),
             cosmooth_r2_pooled=pooled_r2(p, x))
    if likelihood == "poisson":
      m["cosmooth_bps"] = bits_per_spike(p, x)
  return m


def score_metric(likelihood: str, heldout: bool) -> str:
  """The metric the dimension estimate uses (co-smoothing when neurons are held out)."""
  prefix = "cosmooth" if heldout else "valid"
  return f"{prefix}_{'bps' if likelihood == 'poisson' else 'mse'}"


def higher_is_better(metric: str) -> bool:
  return metric.endswith("_bps") or "_r2" in metric


# ----------------------------------------------------------------------------
# Dimension estimate.


def choose_dimension(latents: Sequence[int], score_KS: np.ndarray, null_score: float,
                     gain_fraction: float = DEFAULT_GAIN_FRACTION) -> dict[str, Any]:
  """Picks a latent size from held-out scores [latents, seeds] (higher is better).

  Returns the default estimate (`optimal`: the smallest latent reaching
  `gain_fraction` of the best gain over the smallest latent swept; the
  smallest latent itself when it already reaches that fraction of the gain
  over `null_score`, a zero-latent model), the one-SE choice
  (smallest latent whose mean is within one standard error of the best mean),
  the knee (largest distance above the chord of the gain curve on a log-latent
  axis, Kneedle), and the per-latent means, SEs and gain fractions.
  """
  latents = np.asarray(latents)
  order = np.argsort(latents)
  latents, score_KS = latents[order], np.asarray(score_KS, float)[order]
  n = np.sum(np.isfinite(score_KS), axis=1)
  mean = np.array([np.nanmean(r) if c else np.nan for r, c in zip(score_KS, n)])
  se = np.array([np.nanstd(r, ddof=1) / np.sqrt(c) if c > 1 else 0.0 for r, c in zip(score_KS, n)])
  ok = np.isfinite(mean)
  if not ok.any():
    return {"optimal": None, "one_se": None, "knee": None, "mean": mean.tolist(), "se": se.tolist(),
            "gain_basis": None, "gain_fraction": [None] * len(latents)}
  best = int(np.nanargmax(np.where(ok, mean, -np.inf)))
  first = int(np.flatnonzero(ok)[0])
  null_total = mean[best] - null_score
  if null_total <= 0 or (mean[first] - null_score) >= gain_fraction * null_total:
    # The smallest latent already reaches the fraction of the gain over a zero-latent model.
    basis = "zero-latent model"
    frac = (mean - null_score) / null_total if null_total > 0 else np.where(ok, 1.0, np.nan)
    optimal = int(latents[first])
  else:
    basis = "smallest latent"
    frac = (mean - mean[first]) / (mean[best] - mean[first])
    optimal = int(latents[np.flatnonzero(ok & (frac >= gain_fraction))[0]])
  gain = mean - null_score
  one_se = int(latents[np.flatnonzero(ok & (mean >= mean[best] - se[best]))[0]])
  lk, g = np.log(latents[ok]), gain[ok]
  if len(lk) >= 3 and g.max() > g.min():
    x = (lk - lk[0]) / (lk[-1] - lk[0])
    y = (g - g.min()) / (g.max() - g.min())
    knee = int(latents[ok][int(np.argmax(y - x))])
  else:
    knee = optimal
  return {"optimal": optimal, "one_se": one_se, "knee": knee, "mean": mean.tolist(),
          "se": se.tolist(), "gain_basis": basis,
          "gain_fraction": [None if not np.isfinite(f) else float(f) for f in frac]}


# ----------------------------------------------------------------------------
# A whole sweep.


def flat_valid(dataset: data_lib.Dataset, t_train: int, window: int) -> np.ndarray:
  """The held-out block as the windows cover it: [layers, windows * window, neurons]."""
  v = data_lib.valid_windows(dataset.x_LTN, t_train, window)
  return v.reshape(v.shape[0], -1, v.shape[-1]).astype(np.float64)


def model_predictions(state: train.TrainState, table: sweep_lib.ModelTable,
                      dataset: data_lib.Dataset, cfg: sweep_lib.SweepConfig) -> np.ndarray:
  """Every model's predicted means on the held-out block: [models, time, neurons]."""
  t_train = data_lib.train_time(dataset.num_time, cfg.train_fraction)
  valid_LVWN = jnp.asarray(data_lib.valid_windows(dataset.x_LTN, t_train, cfg.window))
  mask_LN = jnp.asarray(sweep_lib.input_masks(cfg, dataset))
  model = sweep_lib.make_model(cfg, dataset.num_neurons)
  lik = sweep_lib.likelihood(cfg, dataset)
  pred = functools.partial(train.predict, model=model)

  @jax.jit
  def one(params, latent, layer):
    y_VWN, _ = pred(params, latent, valid_LVWN[layer], mask_LN[layer])
    return train.mean_prediction(y_VWN, lik).reshape(-1, y_VWN.shape[-1])

  return np.stack([np.asarray(one(jax.tree.map(lambda a: a[i], state.params), state.latent[i],
                                  int(table.layer[i]))) for i in range(len(table))]
                  ).astype(np.float64)


def evaluate_sweep(dataset: data_lib.Dataset, cfg: sweep_lib.SweepConfig, out: sweep_lib.SweepOutput,
                   gain_fraction: float = DEFAULT_GAIN_FRACTION, fa_iters: int = 100,
                   log=print) -> dict[str, Any]:
  """Full held-out evaluation, baselines and dimension estimates: fields for results.json."""
  t_train = data_lib.train_time(dataset.num_time, cfg.train_fraction)
  lik = sweep_lib.likelihood(cfg, dataset)
  heldout_LN = data_lib.heldout_mask(dataset.num_layers, dataset.num_neurons, cfg.heldout_neurons)
  valid_LTN = flat_valid(dataset, t_train, cfg.window)
  train_LTN = dataset.x_LTN[:, :t_train].astype(np.float64)

  preds = model_predictions(out.state, out.table, dataset, cfg)
  per_model = [block_metrics(preds[i], valid_LTN[l], heldout_LN[l], lik)
               for i, l in enumerate(out.table.layer)]

  log(f"baselines: PCA and FA at {len(cfg.latents)} latent sizes x {dataset.num_layers} layers")
  base_rows, pr, dims90 = [], {}, {}
  for l, name in enumerate(dataset.layer_names):
    pr[name] = round(baselines.participation_ratio(train_LTN[l]), 3)
    dims90[name] = baselines.dims_for_variance(train_LTN[l], 0.9)
    for k in cfg.latents:
      p = baselines.predictions(train_LTN[l], valid_LTN[l], heldout_LN[l], k, fa_iters)
      row: dict[str, Any] = {"layer": name, "latent": int(k)}
      for method in ("pca", "fa"):
        m = block_metrics(p[method], valid_LTN[l], np.zeros_like(heldout_LN[l]), lik)
        row[f"{method}_valid_mse"] = m["valid_mse"]
        row[f"{method}_valid_r2"] = m["valid_r2"]
        if f"{method}_cosmooth" in p:
          pc = p[f"{method}_cosmooth"]
          if lik == "poisson":
            pc = np.maximum(pc, 1e-3)  # linear predictions can go negative: floor the rate.
          mc = block_metrics(pc, valid_LTN[l], heldout_LN[l], lik)
          for key in ("cosmooth_mse", "cosmooth_r2", "cosmooth_bps"):
            if key in mc:
              row[f"{method}_{key}"] = mc[key]
      base_rows.append(row)

  metric = score_metric(lik, bool(cfg.heldout_neurons > 0))
  sign = 1.0 if higher_is_better(metric) else -1.0
  dimension: dict[str, Any] = {"metric": metric, "gain_fraction": gain_fraction,
                               "rule": (f"smallest latent reaching {gain_fraction:.0%} of the best "
                                        f"held-out gain in {metric}, measured from the smallest "
                                        "latent swept (or the smallest latent, if it already reaches "
                                        f"{gain_fraction:.0%} of the gain over a zero-latent model "
                                        "that predicts each neuron by its training mean)"),
                               "layers": {}}
  optimal, knee, one_se = {}, {}, {}
  for l, name in enumerate(dataset.layer_names):
    score_KS = np.full((len(cfg.latents), cfg.seeds), np.nan)
    for i in np.flatnonzero(out.table.layer == l):
      v = per_model[i].get(metric)
      if out.state.diverged_at[i] < 0 and v is not None and np.isfinite(v):
        score_KS[cfg.latents.index(int(out.table.latent[i])), int(out.table.seed[i])] = sign * v
    null_pred = np.broadcast_to(train_LTN[l].mean(axis=0), valid_LTN[l].shape)
    null = sign * block_metrics(null_pred, valid_LTN[l], heldout_LN[l], lik)[metric]
    if metric.endswith("_bps"):
      null = 0.0  # bits/spike is already a gain over each neuron's mean rate.
    d = choose_dimension(cfg.latents, score_KS, null, gain_fraction)
    optimal[name], knee[name], one_se[name] = d["optimal"], d["knee"], d["one_se"]
    dimension["layers"][name] = {"latents": sorted(cfg.latents), "mean": d["mean"], "se": d["se"],
                                 "null": null, "gain_basis": d["gain_basis"],
                                 "gain_fraction": d["gain_fraction"],
                                 "score_sign": sign}
  return {"per_model": per_model, "baselines": base_rows, "participation_ratio": pr,
          "pca_dims_90": dims90, "optimal_latent": optimal, "knee_latent": knee,
          "one_se_latent": one_se, "dimension": dimension}


def merge_into_results(results: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
  """Adds evaluate_sweep's fields to results_dict's output (per-model metrics into `models`)."""
  for entry, m in zip(results["models"], ev["per_model"]):
    entry.update({k: (v if np.isfinite(v) else None) for k, v in m.items()})
  results.update({k: v for k, v in ev.items() if k != "per_model"})
  return results
