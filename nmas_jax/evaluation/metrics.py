"""Metrics on one [time, neurons] block: R2, bits per spike, co-smoothing, block losses."""

from __future__ import annotations

import numpy as np


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
