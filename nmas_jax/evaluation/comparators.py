"""The standard dimension estimators a reviewer asks for, beside the sweep's answer, and the
other context of each layer's dimensionality (`context`: spectrum, FA's shared dimension).

Linear counts: parallel analysis (Horn 1965), PCA's Bayesian rank (Minka 2000), the
participation ratio, and the number of reliable SVCA components (Stringer et al. 2019).
Intrinsic-dimension estimators: TwoNN (Facco et al. 2017) and the Levina-Bickel MLE (2004, with
MacKay and Ghahramani's averaging), both on the training block projected on its
parallel-analysis components. Linear counts overestimate on curved manifolds and noise
inflates every one of them (Altan et al. 2021); `experiments.validate` measures how each does on
the validation families (docs/validation.md). Each is a few lines of numpy, written here rather
than taken from scikit-dimension to keep the core dependencies as they are.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from nmas_jax.evaluation import baselines, spectrum

if TYPE_CHECKING:
  from nmas_jax.config import Settings
  from nmas_jax.data.splits import Prepared

# The estimators `comparators` reports, in its order.
NAMES = ("parallel_analysis", "pca_mle", "participation_ratio", "svca_reliable", "two_nn", "mle")


def parallel_analysis(x_TN: np.ndarray, shuffles: int = 20, seed: int = 0) -> int:
  """Components of the correlation matrix whose eigenvalue exceeds the 95th percentile of the
  same-rank eigenvalue of data with every neuron shuffled in time on its own (Horn 1965)."""
  rng = np.random.default_rng(seed)
  z = (x_TN - x_TN.mean(0)) / np.maximum(x_TN.std(0), 1e-12)
  eig = lambda a: np.linalg.eigvalsh(np.corrcoef(a.T))[::-1]
  null = np.array([eig(rng.permuted(z, axis=0)) for _ in range(shuffles)])
  above = eig(z) > np.percentile(null, 95, axis=0)
  return int(np.argmin(above)) if not above.all() else len(above)


def pca_mle(x_TN: np.ndarray, max_rank: int | None = None) -> int:
  """The rank that maximises the Laplace approximation of PCA's evidence (Minka 2000; the
  `n_components="mle"` of scikit-learn), over ranks 1..min(max_rank, neurons - 1). Its noise
  model is isotropic: with noise of different size per neuron it counts far too many."""
  max_rank = x_TN.shape[1] - 1 if max_rank is None else max_rank
  n, p = x_TN.shape
  lam = np.clip(np.linalg.eigvalsh(np.cov(x_TN.T))[::-1], 0.0, None)
  best, best_ll = 1, -np.inf
  pairs_i, pairs_j = np.triu_indices(p, 1)  # every (i, j > i); rank k keeps i < k
  for k in range(1, min(max_rank, p - 1) + 1):
    if lam[k - 1] < 1e-15:
      break
    v = max(1e-15, lam[k:].sum() / (p - k))
    pu = -k * math.log(2.0) + sum(
      math.lgamma((p - i + 1) / 2.0) - math.log(math.pi) * (p - i + 1) / 2.0
      for i in range(1, k + 1)
    )
    pl = -np.log(lam[:k]).sum() * n / 2.0
    pv = -math.log(v) * n * (p - k) / 2.0
    m = p * k - k * (k + 1.0) / 2.0
    pp = math.log(2.0 * math.pi) * (m + k) / 2.0
    lam_ = np.concatenate([lam[:k], np.full(p - k, v)])
    keep = pairs_i < k
    i, j = pairs_i[keep], pairs_j[keep]
    pa = np.sum(np.log((lam[i] - lam[j]) * (1.0 / lam_[j] - 1.0 / lam_[i])) + math.log(n))
    ll = pu + pl + pv + pp - pa / 2.0 - k * math.log(n) / 2.0
    if ll > best_ll:
      best, best_ll = k, ll
  return best


def svca_reliable(
  train_TN: np.ndarray, heldout_TN: np.ndarray, seed: int = 0, bootstrap: int = 100
) -> int:
  """Leading SVCA components whose reliable variance (covariance of the two neuron halves'
  projections on held-out time) is above zero in 95% of a bootstrap over held-out time blocks."""
  rng = np.random.default_rng(seed)
  _, halves = spectrum.svca(train_TN, heldout_TN, rng)
  boot = np.array(list(spectrum.resampled_variance(heldout_TN, halves, rng, bootstrap)))
  sure = (boot > 0).mean(axis=0) >= 0.95
  return int(np.argmin(sure)) if not sure.all() else len(sure)


def _neighbour_distances(x_TN: np.ndarray, k: int, max_points: int, seed: int) -> np.ndarray:
  """[points, k] distances to each point's k nearest other points (a random subset of time
  points, at most `max_points`; duplicates dropped)."""
  rng = np.random.default_rng(seed)
  x = np.unique(np.asarray(x_TN, np.float64), axis=0)
  if len(x) > max_points:
    x = x[rng.choice(len(x), max_points, replace=False)]
  sq = (x * x).sum(1)
  d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
  np.fill_diagonal(d2, np.inf)
  return np.sqrt(np.sort(np.partition(d2, k, axis=1)[:, :k], axis=1))


def two_nn(x_TN: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
  """TwoNN (Facco et al. 2017): mu, the ratio of each point's second to first nearest-neighbour
  distance, is Pareto with exponent d, so -log(1 - F(mu)) = d log(mu); d is the slope through
  the origin of that line over the empirical CDF, the 10% largest ratios left out as the
  authors do."""
  r = _neighbour_distances(x_TN, 2, max_points, seed)
  mu = np.sort(r[:, 1] / np.maximum(r[:, 0], 1e-300))
  keep = int(0.9 * len(mu))
  x = np.log(mu[:keep])
  y = -np.log(1.0 - np.arange(keep) / len(mu))
  return float((x * y).sum() / (x * x).sum())


def levina_bickel(x_TN: np.ndarray, k: int = 20, max_points: int = 2000, seed: int = 0) -> float:
  """The Levina-Bickel MLE of intrinsic dimension from each point's k nearest neighbours, the
  per-point inverse estimates averaged (MacKay and Ghahramani's correction)."""
  r = _neighbour_distances(x_TN, k, max_points, seed)
  logs = np.log(r[:, -1:] / np.maximum(r[:, :-1], 1e-300))  # [points, k - 1]
  return float(1.0 / np.mean(logs.mean(axis=1)))


def denoised(x_TN: np.ndarray, rank: int) -> np.ndarray:
  """[time, rank]: each time point's scores on the top `rank` principal components of `x_TN`,
  the point cloud with the variance outside its linear answer removed (noise inflates the
  intrinsic-dimension estimators; Altan et al. 2021)."""
  x = np.asarray(x_TN, np.float64)
  u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
  return u[:, :rank] * s[:rank]


def comparators(train_TN: np.ndarray, heldout_TN: np.ndarray, seed: int = 0) -> dict[str, Any]:
  """Every estimator of `NAMES` on one layer: linear counts on the training block (SVCA's
  reliability measured on held-out time); the intrinsic dimensions on the training block
  denoised by projecting it on its parallel-analysis components (`denoised`)."""
  pa = parallel_analysis(train_TN, seed=seed)
  cloud_TQ = denoised(train_TN, max(pa, 1))
  return {
    "parallel_analysis": pa,
    "pca_mle": pca_mle(train_TN),
    "participation_ratio": round(baselines.participation_ratio(train_TN), 2),
    "svca_reliable": svca_reliable(train_TN, heldout_TN, seed=seed),
    "two_nn": round(two_nn(cloud_TQ, seed=seed), 2),
    "mle": round(levina_bickel(cloud_TQ, seed=seed), 2),
  }


def per_layer(prep: Prepared) -> dict[str, dict[str, Any]]:
  """{layer: `comparators` of its training block, SVCA's reliability on validation and test
  time}."""
  train_LTN = prep.train_block()
  held_LTN = np.concatenate([prep.flat("valid"), prep.flat("test")], axis=1)
  return {
    n: comparators(train_LTN[l], held_LTN[l], seed=l)
    for l, n in enumerate(prep.dataset.layer_names)
  }


def context(
  prep: Prepared,
  cfg: Settings,
  fa_iters: int = 100,
  fa_fits: dict[tuple[int, int], tuple] | None = None,
) -> dict[str, Any]:
  """Dimensionality beside the models': each layer's reliable-variance spectrum (SVCA: fitted on
  the training block, measured on validation and test time), the standard estimators
  (`comparators`) and FA's shared dimension (reusing
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
    "comparators": per_layer(prep),
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
