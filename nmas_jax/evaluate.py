"""Held-out evaluation that makes a dimensionality claim checkable.

Metrics on the held-out time block: MSE and R2 over all neurons, and
co-smoothing (as in the Neural Latents Benchmark): held-out neurons, never
shown to the encoder, predicted at held-out times. PCA and FA baselines at
the same latent sizes and splits. Then a dimension estimate per layer
(`dimension.choose_dimension`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import baselines, models, train
from nmas_jax.config import Settings
from nmas_jax.dimension import choose_dimension
from nmas_jax.splits import Prepared
from nmas_jax.table import ModelTable


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
# A whole sweep.


def model_predictions(state: train.TrainState, table: ModelTable, prep: Prepared,
                      cfg: Settings) -> np.ndarray:
  """Every model's predicted means on the held-out block: [models, time, neurons]."""
  valid_LVWN = jnp.asarray(prep.valid_LVTN())
  mask_LN = jnp.asarray(prep.input_mask_LN())
  pred = functools.partial(train.predict, model=models.make_model(cfg, prep.num_neurons))

  @jax.jit
  def one(params, latent, layer):
    y_VWN, _ = pred(params, latent, valid_LVWN[layer], mask_LN[layer])
    return train.mean_prediction(y_VWN, prep.likelihood).reshape(-1, y_VWN.shape[-1])

  return np.stack([np.asarray(one(jax.tree.map(lambda a: a[i], state.params), state.latent[i],
                                  int(table.layer[i]))) for i in range(len(table))]
                  ).astype(np.float64)


def baseline_rows(prep: Prepared, latents, fa_iters: int = 100) -> list[dict[str, Any]]:
  """PCA and FA metrics per (layer, latent), on the same splits as the models."""
  train_LTN, valid_LTN, heldout_LN = prep.train_block(), prep.valid_block(), prep.heldout_LN
  rows = []
  for l, name in enumerate(prep.dataset.layer_names):
    for k in latents:
      p = baselines.predictions(train_LTN[l], valid_LTN[l], heldout_LN[l], k, fa_iters)
      row: dict[str, Any] = {"layer": name, "latent": int(k)}
      for method in ("pca", "fa"):
        m = block_metrics(p[method], valid_LTN[l], np.zeros_like(heldout_LN[l]), prep.likelihood)
        row[f"{method}_valid_mse"] = m["valid_mse"]
        row[f"{method}_valid_r2"] = m["valid_r2"]
        if f"{method}_cosmooth" in p:
          pc = p[f"{method}_cosmooth"]
          if prep.likelihood == "poisson":
            pc = np.maximum(pc, 1e-3)  # linear predictions can go negative: floor the rate.
          mc = block_metrics(pc, valid_LTN[l], heldout_LN[l], prep.likelihood)
          for key in ("cosmooth_mse", "cosmooth_r2", "cosmooth_bps"):
            if key in mc:
              row[f"{method}_{key}"] = mc[key]
      rows.append(row)
  return rows


def dimension_estimates(prep: Prepared, cfg: Settings, table: ModelTable, diverged_at: np.ndarray,
                        per_model: list[dict[str, float]]) -> dict[str, Any]:
  """Per layer: the models' score curve [latents, seeds], the null, and the rule's choices."""
  train_LTN, valid_LTN, heldout_LN = prep.train_block(), prep.valid_block(), prep.heldout_LN
  metric = score_metric(prep.likelihood, bool(cfg.heldout_neurons > 0))
  sign = 1.0 if higher_is_better(metric) else -1.0
  g = cfg.gain_fraction
  dimension: dict[str, Any] = {"metric": metric, "gain_fraction": g,
                               "rule": (f"smallest latent reaching {g:.0%} of the best "
                                        f"held-out gain in {metric}, measured from the smallest "
                                        "latent swept (or the smallest latent, if it already reaches "
                                        f"{g:.0%} of the gain over a zero-latent model "
                                        "that predicts each neuron by its training mean)"),
                               "layers": {}}
  out: dict[str, Any] = {"optimal_latent": {}, "knee_latent": {}, "one_se_latent": {},
                         "dimension": dimension}
  for l, name in enumerate(prep.dataset.layer_names):
    score_KS = np.full((len(cfg.latents), cfg.seeds), np.nan)
    for i in np.flatnonzero(table.layer == l):
      v = per_model[i].get(metric)
      if diverged_at[i] < 0 and v is not None and np.isfinite(v):
        score_KS[cfg.latents.index(int(table.latent[i])), int(table.seed[i])] = sign * v
    null_pred = np.broadcast_to(train_LTN[l].mean(axis=0), valid_LTN[l].shape)
    null = sign * block_metrics(null_pred, valid_LTN[l], heldout_LN[l], prep.likelihood)[metric]
    if metric.endswith("_bps"):
      null = 0.0  # bits/spike is already a gain over each neuron's mean rate.
    d = choose_dimension(cfg.latents, score_KS, null, g)
    for key, rule in (("optimal_latent", "optimal"), ("knee_latent", "knee"), ("one_se_latent", "one_se")):
      out[key][name] = d[rule]
    dimension["layers"][name] = {"latents": sorted(cfg.latents), "mean": d["mean"], "se": d["se"],
                                 "null": null, "gain_basis": d["gain_basis"],
                                 "gain_fraction": d["gain_fraction"], "score_sign": sign}
  return out


def evaluate_sweep(prep: Prepared, cfg: Settings, out, fa_iters: int = 100,
                   log=print) -> dict[str, Any]:
  """Full held-out evaluation of a `sweep.SweepOutput`, baselines and dimension estimates."""
  valid_LTN, heldout_LN = prep.valid_block(), prep.heldout_LN
  preds = model_predictions(out.state, out.table, prep, cfg)
  per_model = [block_metrics(preds[i], valid_LTN[l], heldout_LN[l], prep.likelihood)
               for i, l in enumerate(out.table.layer)]
  log(f"baselines: PCA and FA at {len(cfg.latents)} latent sizes x {prep.dataset.num_layers} layers")
  train_LTN = prep.train_block()
  names = prep.dataset.layer_names
  diverged = np.asarray(out.state.diverged_at)
  return {"per_model": per_model, "baselines": baseline_rows(prep, cfg.latents, fa_iters),
          "participation_ratio": {n: round(baselines.participation_ratio(train_LTN[l]), 3)
                                  for l, n in enumerate(names)},
          "pca_dims_90": {n: baselines.dims_for_variance(train_LTN[l], 0.9) for l, n in enumerate(names)},
          **dimension_estimates(prep, cfg, out.table, diverged, per_model)}
