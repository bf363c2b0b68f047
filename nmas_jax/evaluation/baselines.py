"""Linear baselines at the same latent sizes and splits: PCA and factor analysis (numpy); the
linear dynamical system is in `lds.py`.

Both are fit on the training block only. For co-smoothing each is fit on the
held-in neurons, and the held-out neurons are regressed (least squares with an
intercept, on the training block) on the held-in latents, exactly the
information the autoencoder's encoder gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def covariance_spectrum(x_TN: np.ndarray) -> np.ndarray:
  """Eigenvalues of the neuron covariance, descending."""
  x = x_TN - x_TN.mean(axis=0)
  return np.clip(np.linalg.eigvalsh(x.T @ x / len(x))[::-1], 0.0, None)


def participation_ratio(x_TN: np.ndarray) -> float:
  """(sum eigenvalues)^2 / sum eigenvalues^2: a linear dimension estimate."""
  ev = covariance_spectrum(x_TN)
  return float(ev.sum() ** 2 / max((ev**2).sum(), 1e-300))


def dims_for_variance(x_TN: np.ndarray, fraction: float = 0.9) -> int:
  """Number of principal components needed for `fraction` of the variance."""
  ev = covariance_spectrum(x_TN)
  return int(np.searchsorted(np.cumsum(ev) / ev.sum(), fraction) + 1)


def pca_fit(x_TN: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(mean [N], components [N, k]) of the top-k principal subspace."""
  mean = x_TN.mean(axis=0)
  _, _, vt = np.linalg.svd(x_TN - mean, full_matrices=False)
  return mean, vt[:k].T


def pca_reconstruct(x_TN: np.ndarray, mean: np.ndarray, v_NK: np.ndarray) -> np.ndarray:
  return mean + (x_TN - mean) @ v_NK @ v_NK.T


def fa_loglik(s_NN: np.ndarray, w_NK: np.ndarray, psi_N: np.ndarray) -> float:
  """Mean Gaussian log-likelihood per sample of the FA model C = W W^T + diag(psi), given the
  sample covariance S.

  Through k x k algebra (the determinant lemma and Woodbury's identity), not an N x N solve:
  EM evaluates it every iteration, and at 1131 neurons the dense solve was most of FA's time.
  """
  n, k = w_NK.shape
  wp = w_NK / psi_N[:, None]  # Psi^-1 W  [N, k]
  m = np.eye(k) + w_NK.T @ wp  # I + W^T Psi^-1 W
  logdet = np.sum(np.log(psi_N)) + np.linalg.slogdet(m)[1]
  # tr(C^-1 S) = tr(Psi^-1 S) - tr(M^-1 (Psi^-1 W)^T S (Psi^-1 W))
  trace = np.sum(np.diag(s_NN) / psi_N) - np.trace(np.linalg.solve(m, wp.T @ s_NN @ wp))
  return float(-0.5 * (n * np.log(2 * np.pi) + logdet + trace))


def fa_fit(
  x_TN: np.ndarray, k: int, iters: int = 100, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
  """Factor analysis by EM (Ghahramani & Hinton 1996), initialised from PCA.

  Returns (mean [N], loadings W [N, k], noise variances psi [N], log-likelihood per iteration).
  """
  mean = x_TN.mean(axis=0)
  x = x_TN - mean
  s = x.T @ x / len(x)
  var = np.diag(s).copy()
  floor = 1e-6 * max(var.mean(), 1e-12)
  ev, evec = np.linalg.eigh(s)
  ev, evec = ev[::-1][:k], evec[:, ::-1][:, :k]
  w = evec * np.sqrt(np.clip(ev - np.median(ev) * 0.5, 1e-3 * var.mean(), None))
  psi = np.clip(var - (w**2).sum(axis=1), floor + 0.01 * var, None)
  history = [fa_loglik(s, w, psi)]
  for _ in range(iters):
    wp = w / psi[:, None]  # Psi^-1 W  [N, k]
    m_inv = np.linalg.inv(np.eye(k) + w.T @ wp)  # (I + W^T Psi^-1 W)^-1
    beta = m_inv @ wp.T  # E[z | x] = beta x  [k, N]
    sb = s @ beta.T  # [N, k]
    ezz = m_inv + beta @ sb  # E[z z^T] averaged over samples
    w = sb @ np.linalg.inv(ezz)
    psi = np.clip(var - np.einsum("nk,nk->n", w, sb), floor, None)
    history.append(fa_loglik(s, w, psi))
    if abs(history[-1] - history[-2]) < tol * abs(history[-2]):
      break
  return mean, w, psi, history


def fa_posterior_mean(
  x_TN: np.ndarray, mean: np.ndarray, w_NK: np.ndarray, psi_N: np.ndarray
) -> np.ndarray:
  """E[z | x] [T, k]."""
  wp = w_NK / psi_N[:, None]
  m_inv = np.linalg.inv(np.eye(w_NK.shape[1]) + w_NK.T @ wp)
  return (x_TN - mean) @ wp @ m_inv


def _regress(f_train: np.ndarray, y_train: np.ndarray, f_valid: np.ndarray) -> np.ndarray:
  """Least squares with intercept: predicts y at f_valid."""
  a = np.concatenate([f_train, np.ones((len(f_train), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(a, y_train, rcond=None)
  return np.concatenate([f_valid, np.ones((len(f_valid), 1))], axis=1) @ coef


def predictions(
  train_TN: np.ndarray,
  valid_TN: np.ndarray,
  heldout_N: np.ndarray,
  k: int,
  fa_iters: int = 100,
  reconstruct: bool = True,
  methods: Sequence[str] = ("pca", "fa"),
) -> dict[str, np.ndarray]:
  """Held-out-time predictions [T, N] of PCA and FA (those in `methods`) with k latents.

  "pca"/"fa" (with `reconstruct`): reconstruction of every neuron from all
  neurons. "pca_cosmooth"/"fa_cosmooth": held-out neurons predicted from
  held-in latents (other columns are NaN); absent when no neuron is held out.
  "fa_fit" (with `reconstruct`): the all-neuron FA fit (mean, W, psi), for reuse.
  """
  out: dict[str, Any] = {}
  if reconstruct and "pca" in methods:
    mean, v = pca_fit(train_TN, k)
    out["pca"] = pca_reconstruct(valid_TN, mean, v)
  if reconstruct and "fa" in methods:
    mean, w, psi, _ = fa_fit(train_TN, k, fa_iters)
    out["fa"] = mean + fa_posterior_mean(valid_TN, mean, w, psi) @ w.T
    out["fa_fit"] = (mean, w, psi)
  if not heldout_N.any():
    return out
  inn, held = ~heldout_N, heldout_N
  kk = min(k, int(inn.sum()))
  if "pca" in methods:
    mean, v = pca_fit(train_TN[:, inn], kk)
    out["pca_cosmooth"] = np.full_like(valid_TN, np.nan)
    out["pca_cosmooth"][:, held] = _regress(
      (train_TN[:, inn] - mean) @ v, train_TN[:, held], (valid_TN[:, inn] - mean) @ v
    )
  if "fa" in methods:
    mean, w, psi, _ = fa_fit(train_TN[:, inn], kk, fa_iters)
    out["fa_cosmooth"] = np.full_like(valid_TN, np.nan)
    out["fa_cosmooth"][:, held] = _regress(
      fa_posterior_mean(train_TN[:, inn], mean, w, psi),
      train_TN[:, held],
      fa_posterior_mean(valid_TN[:, inn], mean, w, psi),
    )
  return out


def layer(
  train_TN: np.ndarray,
  eval_UN: np.ndarray,
  in_SN: np.ndarray,
  sizes: Sequence[int],
  methods: Sequence[str],
  reconstruct: bool,
  fa_iters: int = 100,
) -> dict[str, Any]:
  """`batched.layer`'s output from these numpy fits, one (neuron set, latent size) at a time:
  each set's fit sees its neurons `in_SN[s]` and predicts every other neuron."""
  s_count, n = in_SN.shape
  out: dict[str, Any] = {
    f"{m}_cosmooth": np.full((s_count, len(sizes), len(eval_UN), n), np.nan) for m in methods
  }
  if reconstruct:
    out |= {m: np.empty((len(sizes), len(eval_UN), n)) for m in methods} | {"fa_fit": {}}
  for j, k in enumerate(sizes):
    if reconstruct:
      p = predictions(train_TN, eval_UN, np.zeros(n, bool), k, fa_iters, True, methods)
      for m in methods:
        out[m][j] = p[m]
      if "fa_fit" in p:
        out["fa_fit"][k] = p["fa_fit"]
    for s in range(s_count):
      p = predictions(train_TN, eval_UN, ~in_SN[s], k, fa_iters, False, methods)
      for m in methods:
        if f"{m}_cosmooth" in p:  # absent when the set holds every neuron
          out[f"{m}_cosmooth"][s, j] = p[f"{m}_cosmooth"]
  return out


# ----------------------------------------------------------------------------
# Spike smoothing (the Neural Latents Benchmark's simplest co-smoothing baseline).


def gaussian_smooth(x_TN: np.ndarray, width: float, trial_length: int = 0) -> np.ndarray:
  """Each neuron convolved with a Gaussian of std `width` bins (cut at 4 std), within each trial
  of `trial_length` bins (0: one sequence); the kernel is renormalised at the edges."""
  half = max(1, int(np.ceil(4 * width)))
  kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / width) ** 2)
  length = trial_length or len(x_TN)
  x_RTN = x_TN.reshape(-1, length, x_TN.shape[1])

  def conv(a_RTN):
    padded = np.pad(a_RTN, ((0, 0), (half, half), (0, 0)))
    return sum(w * padded[:, i : i + length] for i, w in enumerate(kernel))

  out = conv(x_RTN) / conv(np.ones_like(x_RTN[:1, :, :1]))
  return out.reshape(x_TN.shape)


def poisson_glm(
  f_TD: np.ndarray, y_TN: np.ndarray, ridge: float = 1e-2, iters: int = 30
) -> np.ndarray:
  """Poisson regression with an exp link and an intercept, by Newton's method with a ridge
  penalty (intercept unpenalised): weights [D + 1, N], one column per neuron."""
  a = np.concatenate([f_TD, np.ones((len(f_TD), 1))], axis=1)
  d = a.shape[1]
  pen = ridge * len(a) * np.diag(np.r_[np.ones(d - 1), 0.0])
  w = np.zeros((d, y_TN.shape[1]))
  w[-1] = np.log(np.maximum(y_TN.mean(axis=0), 1e-3))
  for _ in range(iters):
    mu = np.exp(np.clip(a @ w, -20, 20))
    grad = a.T @ (mu - y_TN) + pen @ w
    step = np.stack(
      [np.linalg.solve((a * mu[:, n : n + 1]).T @ a + pen, grad[:, n]) for n in range(w.shape[1])],
      axis=1,
    )
    w -= step
    if np.abs(step).max() < 1e-6:
      break
  return w


def smoothing_cosmooth(
  train_TN: np.ndarray,
  held_TN: np.ndarray,
  heldout_N: np.ndarray,
  width: float,
  trial_length: int = 0,
) -> np.ndarray:
  """Held-out neurons' rates at held-out time [T, N] (NaN in held-in columns): the held-in spikes
  Gaussian-smoothed (`width` bins), then a Poisson GLM fitted on the training block."""
  inn = ~heldout_N
  w = poisson_glm(gaussian_smooth(train_TN[:, inn], width, trial_length), train_TN[:, heldout_N])
  f = gaussian_smooth(held_TN[:, inn], width, trial_length)
  out = np.full_like(held_TN, np.nan, dtype=np.float64)
  out[:, heldout_N] = np.exp(
    np.clip(np.concatenate([f, np.ones((len(f), 1))], axis=1) @ w, -20, 20)
  )
  return out
