"""The reliable-variance spectrum (shared-variance component analysis) and FA's shared dimension.

SVCA (Stringer et al. 2019, Science): the neurons are split in two random halves; the singular
vectors of the halves' cross-covariance on the training block define paired components, and
each component's *reliable variance* is the covariance of the two halves' projections on
held-out time. Noise private to a neuron cannot covary across the halves, so the spectrum is
that of the shared signal; a power law `var_n ~ n^-alpha` is fitted to it on log-log axes.

d_shared (Williamson et al. 2016): the number of dimensions of the cross-validated best factor
analysis model's shared covariance W W^T needed for 95% of its variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from nmas_jax.evaluation import baselines

FIT_RANGE = (2, 20)  # components (1-based, inclusive) the exponent is fitted over
TIME_BLOCKS = 10  # contiguous held-out time blocks resampled by the bootstrap


class Halves(NamedTuple):
  """SVCA's fitted components: the two neuron halves, the training mean, and each half's
  component weights ([N/2, K] each, K = the smaller half's size)."""

  a: np.ndarray
  b: np.ndarray
  mean_N: np.ndarray
  u_AK: np.ndarray
  v_BK: np.ndarray


def svca(
  train_TN: np.ndarray, heldout_TN: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, Halves]:
  """Reliable variance per component [K], from components fitted on `train_TN` and measured on
  `heldout_TN`; and the fitted components."""
  n = train_TN.shape[1]
  order = rng.permutation(n)
  a, b = np.sort(order[: n // 2]), np.sort(order[n // 2 :])
  mean = train_TN.mean(axis=0)
  xa, xb = train_TN[:, a] - mean[a], train_TN[:, b] - mean[b]
  u, _, vt = np.linalg.svd(xa.T @ xb / len(xa), full_matrices=False)
  halves = Halves(a, b, mean, u, vt.T)
  return reliable_variance(heldout_TN, halves), halves


def reliable_variance(
  x_TN: np.ndarray, halves: Halves, index_T: np.ndarray | None = None
) -> np.ndarray:
  """Covariance of the two halves' projections per component on `x_TN[index_T]`."""
  a, b, mean, u, v = halves
  x = x_TN if index_T is None else x_TN[index_T]
  sa, sb = (x[:, a] - mean[a]) @ u, (x[:, b] - mean[b]) @ v
  sa, sb = sa - sa.mean(axis=0), sb - sb.mean(axis=0)
  return (sa * sb).mean(axis=0)


def power_law_exponent(var_K: np.ndarray, fit_range: tuple[int, int] = FIT_RANGE) -> float | None:
  """alpha of var_n ~ n^-alpha, a least-squares line on log-log axes over components
  fit_range[0]..fit_range[1] (1-based, clipped to the positive part of the spectrum); None if
  fewer than 3 such components."""
  lo, hi = fit_range
  n = np.arange(1, len(var_K) + 1)
  use = (n >= lo) & (n <= hi)
  positive = np.cumprod(var_K > 0).astype(bool)  # stop at the first non-positive component
  use &= positive
  if use.sum() < 3:
    return None
  slope, _ = np.polyfit(np.log(n[use]), np.log(var_K[use]), 1)
  return float(-slope)


def resampled_variance(heldout_TN: np.ndarray, halves: Halves, rng, bootstrap: int):
  """The reliable variance [K] on each of `bootstrap` resamples (with replacement) of
  `TIME_BLOCKS` contiguous held-out time blocks, one resample at a time."""
  blocks = np.array_split(np.arange(len(heldout_TN)), TIME_BLOCKS)
  for _ in range(bootstrap):
    pick = rng.integers(0, len(blocks), len(blocks))
    yield reliable_variance(heldout_TN, halves, np.concatenate([blocks[i] for i in pick]))


def spectrum(
  train_TN: np.ndarray,
  heldout_TN: np.ndarray,
  seed: int = 0,
  bootstrap: int = 200,
  fit_range: tuple[int, int] = FIT_RANGE,
) -> dict[str, Any]:
  """One layer's reliable-variance spectrum, its power-law exponent and a 5th-95th percentile
  interval over a bootstrap of `TIME_BLOCKS` contiguous held-out time blocks."""
  rng = np.random.default_rng(seed)
  var, halves = svca(train_TN, heldout_TN, rng)
  alphas = []
  for var_K in resampled_variance(heldout_TN, halves, rng, bootstrap):
    a = power_law_exponent(var_K, fit_range)
    if a is not None:
      alphas.append(a)
  alpha = power_law_exponent(var, fit_range)
  interval = [round(float(np.percentile(alphas, q)), 3) for q in (5, 95)] if alphas else None
  return {
    "reliable_variance": [float(v) for v in var],
    "reliable_fraction": [float(v) for v in var / max(np.trace(np.cov(heldout_TN.T)), 1e-300)],
    "alpha": None if alpha is None else round(alpha, 3),
    "alpha_interval": interval,
    "fit_range": list(fit_range),
    "seed": seed,
  }


def fa_dshared(
  train_TN: np.ndarray,
  valid_TN: np.ndarray,
  latents: Sequence[int],
  fa_iters: int = 100,
  fraction: float = 0.95,
  fits: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, int]:
  """Williamson et al. (2016): the FA model of the swept latent sizes with the highest
  validation-block log-likelihood, and the number of eigen-dimensions of its shared covariance
  W W^T that hold `fraction` of the shared variance. `fits` {k: (W, psi)}: FA fits of
  `train_TN` already made (with `fa_iters`), used instead of fitting again."""
  fits = fits or {}
  best = None
  x_valid = valid_TN - train_TN.mean(axis=0)
  s_valid = x_valid.T @ x_valid / len(x_valid)
  for k in sorted({min(int(k), train_TN.shape[1] - 1) for k in latents if k > 0}):
    w, psi = fits[k] if k in fits else baselines.fa_fit(train_TN, k, fa_iters)[1:3]
    ll = baselines.fa_loglik(s_valid, w, psi)
    if best is None or ll > best[0]:
      best = (ll, k, w)
  if best is None:
    return {"dshared": 0, "latent": 0}
  ev = np.clip(np.linalg.eigvalsh(best[2] @ best[2].T)[::-1], 0.0, None)
  d = int(np.searchsorted(np.cumsum(ev) / max(ev.sum(), 1e-300), fraction) + 1)
  return {"dshared": d, "latent": best[1]}
