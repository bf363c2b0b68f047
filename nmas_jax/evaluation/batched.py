"""PCA and factor analysis of one layer for every (neuron set, latent size) as one jitted program
on the default device: the baselines of `baselines.predictions`, batched.

Neuron sets differ in which neurons a fit sees (`in_SN`: the held-in neurons of a held-out set,
or all of them); latent sizes are padded to the largest and masked, which is exact: a zero
loading column stays zero under FA's EM and is dropped by the masked regression, and PCA's
components come from one SVD per neuron set. Float32, against the float64 numpy reference
within the tolerance tests/test_batched.py states.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np


def _centered(train_TN, in_N):
  """(mean [N], the training block centred, masked to the set's neurons [T, N])."""
  mean = train_TN.mean(axis=0)
  return mean, (train_TN - mean[None]) * in_N[None]


def _regress(f_train_TK, y_TN, f_eval_UK, col_K):
  """Least squares of y on the kept latent columns and an intercept, predicted at f_eval [U, N].
  Columns are scaled to unit norm and the masked ones pinned to zero (exact for zero columns)."""
  ones = lambda f: jnp.ones((f.shape[0], 1), f.dtype)
  keep = jnp.concatenate([col_K, jnp.ones(1, col_K.dtype)])
  a = jnp.concatenate([f_train_TK, ones(f_train_TK)], axis=1) * keep[None]
  d = jnp.linalg.norm(a, axis=0)
  d = jnp.where(d > 0, d, 1.0)
  an = a / d[None]
  coef = jnp.linalg.solve(an.T @ an + jnp.diag(1.0 - keep), an.T @ y_TN)
  return (jnp.concatenate([f_eval_UK, ones(f_eval_UK)], axis=1) * (keep / d)[None]) @ coef


def _columns(k_K, n_in, kmax):
  """[K, kmax] float: the columns latent size k uses (at most the set's neuron count)."""
  return (jnp.arange(kmax)[None] < jnp.minimum(k_K, n_in)[:, None]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("kmax",))
def pca(train_TN, eval_UN, in_SN, k_K, kmax: int):
  """PCA fit on each set's neurons [S] at each latent size [K]: (co-smoothing predictions of every
  neuron from the set's latents [S, K, U, N], reconstructions of the set's neurons through the
  top-k subspace [S, K, U, N]). `kmax` (static) is max(k_K)."""

  def one_set(in_N):
    mean, xc = _centered(train_TN, in_N)
    _, _, vt = jnp.linalg.svd(xc, full_matrices=False)
    v_NJ = vt[:kmax].T
    ev_UN = (eval_UN - mean[None]) * in_N[None]
    f_train, f_eval = xc @ v_NJ, ev_UN @ v_NJ
    cols_KJ = _columns(k_K, in_N.sum(), v_NJ.shape[1])
    co = jax.vmap(lambda c: _regress(f_train * c[None], train_TN, f_eval * c[None], c))(cols_KJ)
    rec = jax.vmap(lambda c: mean[None] + ((f_eval * c[None]) @ v_NJ.T) * in_N[None])(cols_KJ)
    return co, rec

  return jax.vmap(one_set)(in_SN)


def _chol_logdet_solve(m_KK, b_KX):
  """(log det m, m^-1 b) of a symmetric positive definite m, by Cholesky."""
  chol = jnp.linalg.cholesky(m_KK)
  solve = jax.scipy.linalg.cho_solve((chol, True), b_KX)
  return 2.0 * jnp.sum(jnp.log(jnp.diag(chol))), solve


def _fa_em(s_NN, ev_J, evec_NJ, in_N, cols_J, iters: int, tol: float):
  """(W [N, kmax], psi [N]) by EM from `baselines.fa_fit`'s PCA start, stopping where it does:
  at the first update whose mean log-likelihood per sample changed by less than `tol` relative.

  Each iteration's E-step gives the log-likelihood of the current parameters for free (the
  determinant lemma and Woodbury's identity on M = I + W^T Psi^-1 W), so an iteration judges
  the previous update and, past the tolerance, keeps its parameters: the same updates as the
  reference, one N^2 k product per iteration. Masked columns and neurons stay zero."""
  var = jnp.diag(s_NN)
  n_in = in_N.sum()
  var_mean = jnp.sum(var * in_N) / n_in
  floor = 1e-6 * jnp.maximum(var_mean, 1e-12)
  k = cols_J.sum().astype(jnp.int32)
  median = 0.5 * (ev_J[(k - 1) // 2] + ev_J[k // 2])
  scale = jnp.sqrt(jnp.clip(ev_J - median * 0.5, 1e-3 * var_mean, None))
  w = evec_NJ * (scale * cols_J)[None] * in_N[:, None]
  psi = jnp.clip(var - (w**2).sum(axis=1), floor + 0.01 * var, None)
  eye = jnp.eye(w.shape[1])

  def e_step(w, psi):
    """(log-likelihood of (w, psi), S beta^T [N, K], M^-1 [K, K])."""
    wp = w / psi[:, None]  # Psi^-1 W
    swp = s_NN @ wp
    logdet_m, m_inv = _chol_logdet_solve(eye + w.T @ wp, eye)
    trace = jnp.sum(var / psi * in_N) - jnp.trace(m_inv @ (wp.T @ swp))
    logdet = jnp.sum(jnp.log(psi) * in_N) + logdet_m
    ll = -0.5 * (n_in * jnp.log(2 * jnp.pi) + logdet + trace)
    return ll, swp @ m_inv, m_inv

  def m_step(w, psi, sb, m_inv):
    beta_sb = m_inv @ (w / psi[:, None]).T @ sb  # beta S beta^T
    _, w_new_t = _chol_logdet_solve(m_inv + beta_sb, sb.T)
    w_new = w_new_t.T * cols_J[None]
    psi_new = jnp.clip(var - jnp.einsum("nk,nk->n", w_new, sb), floor, None)
    return w_new, psi_new

  def step(carry):
    w, psi, ll_prev, i, _ = carry
    ll, sb, m_inv = e_step(w, psi)
    done = (i >= 2) & (jnp.abs(ll - ll_prev) < tol * jnp.abs(ll_prev))
    new_w, new_psi = m_step(w, psi, sb, m_inv)
    keep = lambda cur, new: jnp.where(done, cur, new)
    return keep(w, new_w), keep(psi, new_psi), ll, i + 1, done

  # i counts E-steps: the i-th judges update i - 1 (none for the first) and makes update i.
  init = (w, psi, jnp.inf, 1, False)
  w, psi, *_ = jax.lax.while_loop(lambda c: (c[3] <= iters) & ~c[4], step, init)
  return w, psi


def _posterior_map(w, psi):
  """[N, kmax]: centred data times it is E[z | x] (`baselines.fa_posterior_mean`)."""
  wp = w / psi[:, None]
  return wp @ jnp.linalg.inv(jnp.eye(w.shape[1]) + w.T @ wp)


@functools.partial(jax.jit, static_argnames=("kmax",))
def fa(train_TN, eval_UN, in_SN, k_K, kmax: int, iters: int = 100, tol: float = 1e-6):
  """FA fit on each set's neurons [S] at each latent size [K]: (co-smoothing predictions of every
  neuron [S, K, U, N], reconstructions E[x | x] of the set's neurons [S, K, U, N], and the fits
  (mean [S, N], W [S, K, N, kmax], psi [S, K, N]))."""

  def one_set(in_N):
    mean, xc = _centered(train_TN, in_N)
    ev_UN = (eval_UN - mean[None]) * in_N[None]
    s_NN = xc.T @ xc / xc.shape[0]
    ev, evec = jnp.linalg.eigh(s_NN)
    ev_J, evec_NJ = ev[::-1][:kmax], evec[:, ::-1][:, :kmax]
    cols_KJ = _columns(k_K, in_N.sum(), ev_J.shape[0])

    def one_k(cols_J):
      w, psi = _fa_em(s_NN, ev_J, evec_NJ, in_N, cols_J, iters, tol)
      post = _posterior_map(w, psi)  # zero rows outside the set: w is zero there
      f_eval = ev_UN @ post
      co = _regress(xc @ post, train_TN, f_eval, cols_J)
      return co, (mean[None] + f_eval @ w.T) * in_N[None], w, psi

    co, rec, w, psi = jax.vmap(one_k)(cols_KJ)
    return co, rec, mean, w, psi

  return jax.vmap(one_set)(in_SN)


# On XLA:CPU a small layer's numpy fits cost less than compiling the batched programs (30
# neurons: 1.9-4.5 s of compile per shape against 0.04-0.09 s of numpy); a Stringer-sized layer's
# cost less batched (1131 neurons: 53-63 s against 89-99 s), a main-job layer's are level (200).
CPU_MIN_NEURONS = 512


def on_device(neurons: int) -> bool:
  """Whether a layer of `neurons` runs the batched programs (`layer`) or the numpy fits
  (`baselines.layer`): always on an accelerator, on the CPU from `CPU_MIN_NEURONS`."""
  return jax.default_backend() != "cpu" or neurons >= CPU_MIN_NEURONS


def layer(
  train_TN: np.ndarray,
  eval_UN: np.ndarray,
  in_SN: np.ndarray,
  sizes: tuple[int, ...],
  methods: tuple[str, ...],
  reconstruct: bool,
  fa_iters: int = 100,
) -> dict[str, np.ndarray]:
  """Every baseline of one layer on the host: "{method}_cosmooth" [S, K, U, N] (every neuron
  predicted from set s's latents), with `reconstruct` "{method}" [K, U, N] (every neuron through
  the all-neuron fit) and "fa_fit" {k: (mean, W [N, k], psi)}."""
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))
  x, ev, k_K = f32(train_TN), f32(eval_UN), jnp.asarray(sizes, jnp.int32)
  sets = np.concatenate([in_SN, np.ones((1, in_SN.shape[1]), bool)]) if reconstruct else in_SN
  args = (x, ev, f32(sets), k_K)
  out: dict = {}
  kmax = max(sizes)
  for method in methods:
    if method == "pca":
      co, rec = pca(*args, kmax=kmax)
    elif method == "fa":
      co, rec, mean, w, psi = fa(*args, kmax=kmax, iters=fa_iters)
      if reconstruct:
        mean, w, psi = np.asarray(mean[-1], float), np.asarray(w[-1], float), np.asarray(psi[-1])
        out["fa_fit"] = {k: (mean, w[j, :, :k], psi[j].astype(float)) for j, k in enumerate(sizes)}
    else:
      continue
    co = np.asarray(co, float)
    out[f"{method}_cosmooth"] = co[: len(in_SN)]
    if reconstruct:
      out[method] = np.asarray(rec, float)[-1]
  return out
