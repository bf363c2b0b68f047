"""A Gaussian linear dynamical system baseline, fitted by EM with a steady-state Kalman smoother.

  z_t = A z_{t-1} + w_t,  w_t ~ N(0, Q)          latent state [K]
  y_t = C z_t + d + v_t,  v_t ~ N(0, diag(R))    observations [N]
  z_0 ~ N(0, P)

P is the filter's steady-state predicted covariance (the fixed point of the Riccati recursion),
so the Kalman filter and its gain are stationary from the first bin. Everything the E-step needs
then costs K x K work per bin: the filter and the Rauch-Tung-Striebel smoother are two linear
scans with fixed matrices, and the sums of smoothed covariances are closed forms (Stein
equations, solved by doubling). d is each neuron's training mean (held fixed).

Each latent size is its own jitted program (EM's iterations are one `lax.scan`): padding every
size to the largest and vmapping them costs up to five times the K^3 work, and on XLA:CPU with
multithreaded Eigen the vmapped Riccati loop deadlocked in 2 of 3 runs
(docs/notes/2026-11-28-dimension.md). On a GPU the fits run on the device with the filter and
smoother as log-depth doubling recursions (`recursion`); on the CPU as sequential scans.
`tests/test_lds.py` checks the smoother and the likelihood against a dense joint-Gaussian
computation.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

RICCATI_ITERS = 2000  # cap on Riccati iterations per E-step (warm-started, usually few)
RICCATI_TOL = 1e-7  # relative change that ends them
R_FLOOR = 1e-4  # noise-variance floor, as a fraction of each neuron's variance


class LDS(NamedTuple):
  """Parameters of one model."""

  a_KK: jax.Array
  q_KK: jax.Array
  c_NK: jax.Array
  d_N: jax.Array
  r_N: jax.Array


class Steady(NamedTuple):
  """The stationary filter and smoother: predicted, filtered and smoothed covariances, the
  smoother gain J, and S = sum_j J^j (P_f - P_s) J^j^T (the smoothed covariances' end effect)."""

  p_pred: jax.Array
  p_filt: jax.Array
  p_smooth: jax.Array
  gain: jax.Array
  end_sum: jax.Array


def _sym(m):
  return 0.5 * (m + m.T)


def _info(p: LDS) -> jax.Array:
  """C^T R^-1 C [K, K]."""
  return p.c_NK.T @ (p.c_NK / p.r_N[:, None])


def _filtered(p_pred, info):
  """(P^-1 + C^T R^-1 C)^-1 = P (I + info P)^-1, without inverting P."""
  eye = jnp.eye(p_pred.shape[0], dtype=p_pred.dtype)
  return _sym(jnp.linalg.solve((eye + info @ p_pred).T, p_pred.T).T)


def _stein(j_KK, d_KK, steps: int):
  """X = sum_{i < 2^steps} J^i D J^i^T (-> the solution of X = D + J X J^T), by doubling."""

  def body(_, carry):
    x, j = carry
    return x + j @ x @ j.T, j @ j

  x, _ = jax.lax.fori_loop(0, steps, body, (d_KK, j_KK))
  return _sym(x)


def doubling_steps(num_time: int) -> int:
  """Doubling steps whose sums cover more than twice the series' length."""
  return max(1, int(np.ceil(np.log2(max(num_time, 2))))) + 1


def steady_state(p: LDS, p_init: jax.Array, num_time: int) -> Steady:
  """The stationary filter/smoother of `p` for `num_time` bins, iterating the Riccati recursion
  from `p_init`."""
  info = _info(p)

  def step(pp):
    return _sym(p.a_KK @ _filtered(pp, info) @ p.a_KK.T + p.q_KK)

  def cond(c):
    i, prev, cur = c
    return (i < RICCATI_ITERS) & (
      jnp.max(jnp.abs(cur - prev)) > RICCATI_TOL * jnp.max(jnp.abs(cur))
    )

  def body(c):
    i, _, cur = c
    return i + 1, cur, step(cur)

  _, _, p_pred = jax.lax.while_loop(cond, body, (0, p_init, step(p_init)))
  p_filt = _filtered(p_pred, info)
  gain = jnp.linalg.solve(p_pred, p.a_KK @ p_filt).T  # J = P_f A^T P^-1
  n = doubling_steps(num_time)
  p_smooth = _stein(gain, p_filt - gain @ p_pred @ gain.T, n)  # P_s = P_f + J (P_s - P) J^T
  return Steady(p_pred, p_filt, p_smooth, gain, _stein(gain, p_filt - p_smooth, n))


def recursion(f_KK: jax.Array, b_TK: jax.Array, parallel: bool = False) -> jax.Array:
  """x [T, K] of x_t = F x_{t-1} + b_t from x_{-1} = 0, with F fixed (the steady-state filter
  and smoother are such recursions). `parallel`: by doubling, ceil(log2 T) steps each one
  [T, K] x [K, K] product (x_t += F^h x_{t-h}, h = 1, 2, 4, ...): few wide kernels for an
  accelerator in place of T tiny sequential ones, at log2 T times the flops."""
  if not parallel:
    return jax.lax.scan(lambda x, b: (f_KK @ x + b,) * 2, jnp.zeros_like(b_TK[0]), b_TK)[1]
  x, f, h = jnp.asarray(b_TK), jnp.asarray(f_KK), 1
  while h < b_TK.shape[0]:
    x = x.at[h:].add(x[:-h] @ f.T)
    f, h = f @ f, 2 * h
  return x


def smooth(
  p: LDS, st: Steady, y_TN: jax.Array, parallel: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Smoothed means [T, K], filtered means [T, K] and the log-likelihood log p(y_1..T); the
  filter and smoother run as `recursion(..., parallel)`."""
  info = _info(p)
  k = p.a_KK.shape[0]
  eye = jnp.eye(k, dtype=p.a_KK.dtype)
  e_TN = y_TN - p.d_N[None]
  proj_TK = e_TN @ (p.c_NK / p.r_N[:, None])  # C^T R^-1 (y_t - d)
  # Filter: m_f,t = F m_f,t-1 + P_f proj_t.
  m_f = recursion((eye - st.p_filt @ info) @ p.a_KK, proj_TK @ st.p_filt, parallel)
  m_pred = jnp.concatenate([jnp.zeros_like(m_f[:1]), m_f[:-1]]) @ p.a_KK.T  # A m_f,t-1
  # Innovation y - d - C m_pred under S = C P C^T + R, through K x K algebra (Woodbury).
  u = proj_TK - m_pred @ info  # C^T R^-1 (y - d - C m_pred); info is symmetric
  res = e_TN - m_pred @ p.c_NK.T
  quad_T = jnp.sum(res**2 / p.r_N[None], axis=1) - jnp.einsum("tk,kl,tl->t", u, st.p_filt, u)
  logdet = jnp.sum(jnp.log(p.r_N)) + jnp.linalg.slogdet(eye + info @ st.p_pred)[1]
  n, t = y_TN.shape[1], y_TN.shape[0]
  loglik = -0.5 * (jnp.sum(quad_T) + t * (logdet + n * jnp.log(2 * jnp.pi)))
  # Smoother, backwards: m_s,t = (I - J A) m_f,t + J m_s,t+1, from m_s,T-1 = m_f,T-1.
  c_TK = jnp.concatenate([m_f[:-1] @ (eye - st.gain @ p.a_KK).T, m_f[-1:]])
  m_s = recursion(st.gain, c_TK[::-1], parallel)[::-1]
  return m_s, m_f, loglik


def em_step(
  p: LDS, p_init: jax.Array, y_TN: jax.Array, parallel: bool = False
) -> tuple[LDS, jax.Array, jax.Array]:
  """One EM iteration: (new parameters, the steady covariance to warm-start from, the
  log-likelihood of the parameters it started from)."""
  t, k = y_TN.shape[0], p.a_KK.shape[0]
  st = steady_state(p, p_init, t)
  m_s, _, loglik = smooth(p, st, y_TN, parallel)
  e_TN = y_TN - p.d_N[None]
  cov_all = t * st.p_smooth + st.end_sum  # sum_t Cov(z_t | y)
  s_zz = m_s.T @ m_s + cov_all  # sum_t E[z_t z_t^T]
  s_first = s_zz - jnp.outer(m_s[-1], m_s[-1]) - st.p_filt  # t = 0..T-2
  s_last = s_zz - jnp.outer(m_s[0], m_s[0]) - st.p_smooth  # t = 1..T-1
  s_cross = m_s[1:].T @ m_s[:-1] + (cov_all - st.p_smooth) @ st.gain.T  # sum E[z_t z_{t-1}^T]
  s_yz = e_TN.T @ m_s
  c = jnp.linalg.solve(s_zz, s_yz.T).T
  var = jnp.mean(e_TN**2, axis=0)
  r = jnp.maximum(var - jnp.einsum("nk,nk->n", c, s_yz) / t, R_FLOOR * var + 1e-12)
  a = jnp.linalg.solve(s_first, s_cross.T).T
  q = _sym(s_last - a @ s_cross.T) / (t - 1) + 1e-6 * jnp.eye(k)
  return LDS(a, q, c, p.d_N, r), st.p_pred, loglik


def init(y_TN: np.ndarray, k: int) -> LDS:
  """Starting parameters from PCA: C the top k principal axes, A and Q the least-squares
  AR(1) fit of the projections, R the residual variance, d the mean."""
  y = np.asarray(y_TN, np.float64)
  d = y.mean(axis=0)
  _, _, vt = np.linalg.svd(y - d, full_matrices=False)
  c = vt[:k].T  # [N, k]; k <= min(T, N)
  z = (y - d) @ c
  a = np.linalg.lstsq(z[:-1], z[1:], rcond=None)[0].T * 0.99
  res = z[1:] - z[:-1] @ a.T
  q = res.T @ res / len(res) + 1e-6 * np.eye(k)
  var = (y - d).var(axis=0)
  r = np.maximum(((y - d) - z @ c.T).var(axis=0), R_FLOOR * var + 1e-12)
  return LDS(*map(jnp.asarray, (a, q, c, d, r)))


def _placement() -> tuple[contextlib.ExitStack, bool]:
  """Where fits run, in float64, and whether their recursions run `parallel`: on a GPU, on the
  default device by doubling (sequential, a fit is thousands of tiny kernel launches: 60-96 s
  per Stringer-sized layer on an H100, docs/notes/2026-11-28-benchmarks.md); elsewhere on the
  host CPU as a sequential scan, the cheaper schedule there (a TPU's float64 is emulated)."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.enable_x64(True))
  parallel = jax.default_backend() == "gpu"
  if not parallel:
    stack.enter_context(jax.default_device(jax.devices("cpu")[0]))
  return stack, parallel


@functools.partial(jax.jit, static_argnames=("iters", "parallel"))
def _fit(p: LDS, y_TN: jax.Array, iters: int, parallel: bool = False) -> tuple[LDS, jax.Array]:
  def body(carry, _):
    p, p_init = carry
    p, p_init, ll = em_step(p, p_init, y_TN, parallel)
    return (p, p_init), ll

  (p, _), lls = jax.lax.scan(body, (p, jnp.eye(p.a_KK.shape[0])), None, length=iters)
  return p, lls


def fit(
  y_TN: np.ndarray, k: int, iters: int = 20, parallel: bool | None = None
) -> tuple[LDS, np.ndarray]:
  """EM fit of a k-state LDS to y [T, N] (float64): (parameters, log-likelihood per iteration
  [iters], each of the parameters that iteration started from). `parallel`: the recursions'
  schedule (default: `_placement`'s for this backend)."""
  if not 0 < k <= min(y_TN.shape):
    raise ValueError(f"an LDS of {k} states needs 0 < k <= min(time, neurons) = {min(y_TN.shape)}")
  stack, default = _placement()
  with stack:
    par = default if parallel is None else parallel
    p, lls = _fit(init(y_TN, k), jnp.asarray(y_TN, jnp.float64), iters, par)
    return jax.tree.map(np.asarray, p), np.asarray(lls)


@functools.partial(jax.jit, static_argnames="parallel")
def _smoothed(p: LDS, y_TN: jax.Array, parallel: bool = False) -> jax.Array:
  st = steady_state(p, jnp.eye(p.a_KK.shape[0]), y_TN.shape[0])
  return smooth(p, st, y_TN, parallel)[0]


def smoothed_means(p: LDS, y_TN: np.ndarray) -> np.ndarray:
  """E[z_t | y_1..T] [T, K] under `p` (a Kalman filter and RTS smoother)."""
  stack, parallel = _placement()
  with stack:
    p = jax.tree.map(jnp.asarray, p)
    return np.asarray(_smoothed(p, jnp.asarray(y_TN, jnp.float64), parallel))


def cosmooth(
  train_TN: np.ndarray, heldout_N: np.ndarray, blocks: Sequence[np.ndarray], k: int, iters: int = 20
) -> list[np.ndarray]:
  """Co-smoothing predictions [T_b, N] for each held-out time block (held-out columns filled,
  others NaN): a k-state LDS fitted to the held-in neurons of the training block; the held-out
  neurons regressed (least squares with an intercept) on its smoothed states there; their
  predictions on each block from the states smoothed from that block's held-in neurons."""
  inn, held = ~heldout_N, heldout_N
  k = min(k, int(inn.sum()), len(train_TN))
  p, _ = fit(train_TN[:, inn], k, iters)
  z_train = smoothed_means(p, train_TN[:, inn])
  a = np.concatenate([z_train, np.ones((len(z_train), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(a, train_TN[:, held], rcond=None)
  out = []
  for x in blocks:
    z = smoothed_means(p, x[:, inn])
    pred = np.full(x.shape, np.nan)
    pred[:, held] = np.concatenate([z, np.ones((len(z), 1))], axis=1) @ coef
    out.append(pred)
  return out
