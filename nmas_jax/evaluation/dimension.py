"""The dimension estimate: which latent size a held-out gain curve asks for, with its uncertainty.

The gain of a latent size k is how much its models lower the held-out loss
(squared error, or Poisson NLL) of held-out neurons on the validation block
below the zero-latent null (each held-out neuron predicted by its
training-block mean or rate), per held-out element, averaged over seeds.

The rule (`choose`): the answer is the smallest swept k whose gain reaches
`fraction` of the gain of every larger swept latent,
  G(k) >= fraction * max_{k' >= k} G(k'),
and 0 when no latent gains anything. It reads only the curve: no branch on
where the grid starts. A latent below the answer that falls short of this
never changes it, and neither does a latent added above the answer whose gain
stays within 1/fraction of the answer's (a plateau). `estimate` adds a
bootstrap over validation time blocks and seeds: the 5th-95th percentile
interval of the answer, and the zero-dimension test (the answer is 0 unless
the best gain is above zero in at least 95% of the resamples). docs/notes/2026-11-28-dimension.md
says why, and how knife-edge curves come out.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_GAIN_FRACTION = 0.95
# How far below the bar the latent just below the answer counts as near it: training holds such
# models (`training.selection.StopRule`), and reports flag the layer.
NEAR_BAR = 0.05


def choose(
  latents: Sequence[int], gain_K: np.ndarray, fraction: float = DEFAULT_GAIN_FRACTION
) -> int:
  """The rule on one gain curve [latents] (NaN: not available); 0 when nothing gains."""
  order = np.argsort(latents)
  ks, g = np.asarray(latents)[order], np.asarray(gain_K, float)[order]
  ok = np.isfinite(g)
  ks, g = ks[ok], g[ok]
  if not len(g) or g.max() <= 0:
    return 0
  best_above = np.maximum.accumulate(g[::-1])[::-1]  # max over k' >= k
  return int(ks[np.flatnonzero(g >= fraction * best_above)[0]])


def knee(latents: Sequence[int], gain_K: np.ndarray) -> int | None:
  """The point of the gain curve farthest above its chord on a log-latent axis (Kneedle)."""
  ks, g = np.asarray(latents, float), np.asarray(gain_K, float)
  ok = np.isfinite(g)
  if ok.sum() < 3 or g[ok].max() <= g[ok].min():
    return None
  lk, g = np.log(ks[ok]), g[ok]
  x = (lk - lk[0]) / (lk[-1] - lk[0])
  y = (g - g.min()) / (g.max() - g.min())
  return int(ks[ok][int(np.argmax(y - x))])


def gains(loss_KSB: np.ndarray, null_SB: np.ndarray, count_SB: np.ndarray) -> np.ndarray:
  """Gain per element [latents, seeds]: (null loss - model loss) summed over blocks / elements."""
  return (null_SB[None].sum(-1) - loss_KSB.sum(-1)) / count_SB[None].sum(-1)


def estimate(
  latents: Sequence[int],
  loss_KSB: np.ndarray,
  null_SB: np.ndarray,
  count_SB: np.ndarray,
  fraction: float = DEFAULT_GAIN_FRACTION,
  resamples: int = 200,
  seed: int = 0,
) -> dict[str, Any]:
  """The answer, its bootstrap interval and the reported alternatives for one layer.

  Args:
    latents: the swept latent sizes K, ascending.
    loss_KSB: held-out loss summed over each validation time block [latents, seeds, blocks]
      (NaN for a diverged model).
    null_SB, count_SB: the null's loss and the number of held-out elements per block [seeds,
    blocks].
    fraction: the rule's fraction; resamples, seed: the bootstrap's.
  Returns:
    optimal, interval [5th, 95th percentile], p_positive (share of resamples whose best gain
    is above zero), knee, one_se, detectable (the smallest latent that no larger one beats in
    95% of the resamples; 0 with optimal 0), and the curve: gain (mean over seeds), gain_se,
    gain_fraction.
  """
  latents = np.asarray(latents)
  g_KS = gains(loss_KSB, null_SB, count_SB)
  n_KS = np.isfinite(g_KS).sum(axis=1)
  mean = np.array([np.nanmean(r) if c else np.nan for r, c in zip(g_KS, n_KS)])
  se = np.array([np.nanstd(r, ddof=1) / np.sqrt(c) if c > 1 else 0.0 for r, c in zip(g_KS, n_KS)])
  rng = np.random.default_rng(seed)
  seeds, blocks = null_SB.shape
  choices, positive, g_RK = [], [], []
  for _ in range(resamples):
    s, b = rng.integers(0, seeds, seeds), rng.integers(0, blocks, blocks)
    g = np.nanmean(gains(loss_KSB[:, s][:, :, b], null_SB[s][:, b], count_SB[s][:, b]), axis=1)
    choices.append(choose(latents, g, fraction))
    positive.append(np.nanmax(g) > 0 if np.isfinite(g).any() else False)
    g_RK.append(g)
  p_positive = float(np.mean(positive)) if resamples else float(np.nanmax(mean) > 0)
  optimal = choose(latents, mean, fraction) if p_positive >= 0.95 else 0
  detectable = (
    0 if p_positive < 0.95 else (_detectable(latents, np.array(g_RK)) if resamples else None)
  )
  ok = np.isfinite(mean)
  best = int(np.nanargmax(np.where(ok, mean, -np.inf))) if ok.any() else 0
  one_se = (
    int(latents[np.flatnonzero(ok & (mean >= mean[best] - se[best]))[0]]) if ok.any() else None
  )
  top = np.nanmax(mean) if ok.any() else np.nan
  lo, hi = (
    np.quantile(choices, [0.05, 0.95], method="inverted_cdf") if resamples else (optimal, optimal)
  )
  return {
    "optimal": optimal,
    "interval": [int(lo), int(hi)],
    "p_positive": p_positive,
    "knee": knee(latents, mean),
    "one_se": one_se,
    "detectable": detectable,
    "gain": [_num(v) for v in mean],
    "gain_se": [_num(v) for v in se],
    "gain_fraction": [_num(v / top) if top > 0 else None for v in mean],
  }


def _detectable(latents: np.ndarray, g_RK: np.ndarray, level: float = 0.95) -> int | None:
  """The smallest latent that no larger latent beats in `level` of the bootstrap resamples
  [resamples, latents]: every dimension the held-out data can detect, however small its gain."""
  some = np.isfinite(g_RK).any(axis=0)  # a latent whose every seed diverged is left out
  ks, g = latents[some], g_RK[:, some]

  def beats(j, i):  # over the resamples where both are finite
    both = np.isfinite(g[:, j]) & np.isfinite(g[:, i])
    return both.any() and np.mean(g[both, j] > g[both, i]) >= level

  for i in range(len(ks)):
    if not any(beats(j, i) for j in range(i + 1, len(ks))):
      return int(ks[i])
  return None


def _num(x) -> float | None:
  return float(x) if np.isfinite(x) else None


def _oracle_blocks(num_time: int, train_fraction: float, valid_fraction: float) -> tuple[int, int]:
  """The oracles' training block [0, t1) and validation block [t1, t2)."""
  t1 = int(train_fraction * num_time)
  return t1, t1 + int(valid_fraction * num_time)


def _lstsq_loss(a_TP: np.ndarray, x_TN: np.ndarray, t1: int, t2: int) -> np.ndarray:
  """Each neuron's squared error [neurons] on [t1, t2) of its least-squares fit from the
  predictors `a_TP` on [0, t1)."""
  b = np.linalg.lstsq(a_TP[:t1], x_TN[:t1], rcond=None)[0]
  return ((x_TN[t1:t2] - a_TP[t1:t2] @ b) ** 2).sum(axis=0)


def oracle_gains(
  x_TN: np.ndarray,
  truth_TN: np.ndarray,
  latents: Sequence[int],
  counts: bool,
  train_fraction: float = 0.7,
  valid_fraction: float = 0.1,
) -> np.ndarray:
  """The gain curve [latents] of the true signal's best rank-k summary, on the validation block
  (generated data only: `truth_TN` is the noiseless signal [time, neurons], rates for counts).

  The noiseless signal (log-rates for counts, means otherwise) is reduced to its top-k
  principal components over all time; each neuron is then fitted on the training block
  (a Poisson GLM through exp, or least squares) from those k components and scored on the
  validation block against its training-block mean, as the rule's gain. This is what the rule
  would answer if the estimator knew the true latents: it separates "the estimator missed"
  from "the rule's definition asks for fewer dimensions than the generator has signals".
  """
  x, s = np.asarray(x_TN, np.float64), np.asarray(truth_TN, np.float64)
  if counts:
    s = np.log(np.maximum(s, 1e-12))
  t1, t2 = _oracle_blocks(len(x), train_fraction, valid_fraction)
  u, sv, _ = np.linalg.svd(s - s.mean(axis=0), full_matrices=False)
  rank = int((sv > 1e-4 * sv[0]).sum())  # float32 rates: directions below this are round-off
  null = x[:t1].mean(axis=0)

  yv = x[t1:t2]
  null_loss = (
    (null - yv * np.log(np.maximum(null, 1e-12))).sum(axis=0)
    if counts
    else ((yv - null) ** 2).sum(axis=0)
  )
  out = []
  for k in latents:
    a = np.c_[np.ones(len(x)), u[:, : min(k, rank)] * sv[: min(k, rank)]]
    if counts:  # Newton's method for each neuron's Poisson GLM
      b = np.zeros((a.shape[1], x.shape[1]))
      b[0] = np.log(np.maximum(null, 1e-12))
      for _ in range(25):
        mu = np.exp(a[:t1] @ b)
        for n in range(x.shape[1]):
          h = (a[:t1] * mu[:, n, None]).T @ a[:t1] + 1e-6 * np.eye(a.shape[1])
          b[:, n] += np.linalg.solve(h, a[:t1].T @ (x[:t1, n] - mu[:, n]))
      eta = a[t1:t2] @ b
      model_loss = (np.exp(eta) - yv * eta).sum(axis=0)
    else:
      model_loss = _lstsq_loss(a, x, t1, t2)
    out.append((null_loss - model_loss).sum() / yv.size)
  return np.array(out)


# ----------------------------------------------------------------------------
# Latents in bands of time constants (--model=multiscale).


def choose_bands(
  combos_CB: np.ndarray,
  gain_C: np.ndarray,
  timescales: Sequence[int],
  fraction: float = DEFAULT_GAIN_FRACTION,
) -> tuple[int, ...]:
  """The rule over combinations of per-band counts [combos, bands]: the smallest total whose gain
  reaches `fraction` of the gain of every combination of larger or equal total; among those of
  that total, the slower explanation (most latents in the slowest band, then the next). All
  zeros when nothing gains."""
  combos_CB, g = np.asarray(combos_CB), np.asarray(gain_C, float)
  ok = np.isfinite(g)
  if not ok.any() or g[ok].max() <= 0:
    return (0,) * combos_CB.shape[1]
  total = combos_CB.sum(axis=1)
  slow_first = np.argsort(-np.asarray(timescales), kind="stable")
  qualify = [i for i in np.flatnonzero(ok) if g[i] >= fraction * g[ok & (total >= total[i])].max()]
  best = min(qualify, key=lambda i: (total[i], *(-combos_CB[i, slow_first])))
  return tuple(int(c) for c in combos_CB[best])


def oracle_band_gains(
  x_TN: np.ndarray,
  signals_by_band: Sequence[np.ndarray],
  combos_CB: np.ndarray,
  train_fraction: float = 0.7,
  valid_fraction: float = 0.1,
) -> np.ndarray:
  """The gain [combos] that `choose_bands` would see if each band's latents were that band's true
  signals (generated Gaussian data only: `signals_by_band[b]` is band b's [time, signals]).

  For each combination of per-band counts, the best least-squares fit of every neuron from
  that many of each band's signals (every subset tried; a count above a band's signals uses them
  all), fitted on the training block and scored on the validation block against the training
  mean, as the rule's gain. As `oracle_gains` for one band: it says whether the rule's own answer
  on the truth is the generator's count per band.
  """
  x = np.asarray(x_TN, np.float64)
  t1, t2 = _oracle_blocks(len(x), train_fraction, valid_fraction)
  null_loss = ((x[t1:t2] - x[:t1].mean(axis=0)) ** 2).sum(axis=0)

  def gain(cols):
    a = np.concatenate([np.ones((len(x), 1)), *cols], axis=1)
    return (null_loss - _lstsq_loss(a, x, t1, t2)).sum() / x[t1:t2].size

  out = []
  for combo in np.asarray(combos_CB):
    choices = [
      itertools.combinations(range(z.shape[1]), min(int(c), z.shape[1]))
      for c, z in zip(combo, signals_by_band)
    ]
    out.append(
      max(
        gain([np.asarray(z, np.float64)[:, list(i)] for z, i in zip(signals_by_band, pick)])
        for pick in itertools.product(*choices)
      )
    )
  return np.array(out)


def estimate_bands(
  combos_CB: np.ndarray,
  loss_CSB: np.ndarray,
  null_SB: np.ndarray,
  count_SB: np.ndarray,
  timescales: Sequence[int],
  fraction: float = DEFAULT_GAIN_FRACTION,
  resamples: int = 200,
  seed: int = 0,
) -> dict[str, Any]:
  """`choose_bands` on one layer's loss curves [combos, seeds, blocks], with the bootstrap of
  `estimate`: the chosen counts per band, each band's and the total's 5th-95th percentile interval,
  p_positive, and the gain (mean over seeds) and gain_fraction of every combination."""
  combos_CB = np.asarray(combos_CB)
  g_CS = gains(loss_CSB, null_SB, count_SB)
  mean = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in g_CS])
  rng = np.random.default_rng(seed)
  seeds, blocks = null_SB.shape
  choices, positive = [], []
  for _ in range(resamples):
    s, b = rng.integers(0, seeds, seeds), rng.integers(0, blocks, blocks)
    with np.errstate(invalid="ignore"):
      g = np.nanmean(gains(loss_CSB[:, s][:, :, b], null_SB[s][:, b], count_SB[s][:, b]), axis=1)
    choices.append(choose_bands(combos_CB, g, timescales, fraction))
    positive.append(np.nanmax(g) > 0 if np.isfinite(g).any() else False)
  p_positive = float(np.mean(positive)) if resamples else float(np.nanmax(mean) > 0)
  zero = (0,) * combos_CB.shape[1]
  optimal = choose_bands(combos_CB, mean, timescales, fraction) if p_positive >= 0.95 else zero
  chosen = np.asarray(choices or [optimal]).reshape(-1, combos_CB.shape[1])
  quant = lambda v: [int(q) for q in np.quantile(v, [0.05, 0.95], method="inverted_cdf")]
  top = np.nanmax(mean) if np.isfinite(mean).any() else np.nan
  return {
    "optimal": list(optimal),
    "total": int(sum(optimal)),
    "p_positive": p_positive,
    "interval": [quant(chosen[:, b]) for b in range(chosen.shape[1])],
    "total_interval": quant(chosen.sum(axis=1)),
    "gain": [_num(v) for v in mean],
    "gain_fraction": [_num(v / top) if top > 0 else None for v in mean],
  }
