"""The linear dynamical system baseline: its smoother and likelihood against a dense joint-Gaussian
computation, EM's monotone likelihood, and the state dimension recovered by the dimension rule."""

import jax
import numpy as np

from nmas_jax import config
from nmas_jax.data import Dataset, splits, synthetic
from nmas_jax.evaluation import evaluate, lds


def _dense_posterior(p: lds.LDS, y_TN: np.ndarray, p0_KK: np.ndarray):
  """E[z | y] [T, K] and log p(y) from the joint Gaussian of all T states and observations."""
  a, q, c, d, r = (np.asarray(v) for v in p)
  t, k = len(y_TN), a.shape[0]
  cov = [p0_KK]
  for _ in range(1, t):
    cov.append(a @ cov[-1] @ a.T + q)
  s = np.zeros((t * k, t * k))
  for i in range(t):
    for j in range(i + 1):
      blk = np.linalg.matrix_power(a, i - j) @ cov[j]  # Cov(z_i, z_j), i >= j
      s[i * k : (i + 1) * k, j * k : (j + 1) * k] = blk
      s[j * k : (j + 1) * k, i * k : (i + 1) * k] = blk.T
  h = np.kron(np.eye(t), c)
  s_y = h @ s @ h.T + np.diag(np.tile(r, t))
  e = (y_TN - d).reshape(-1)
  mean = s @ h.T @ np.linalg.solve(s_y, e)
  loglik = -0.5 * (
    e @ np.linalg.solve(s_y, e) + np.linalg.slogdet(s_y)[1] + len(e) * np.log(2 * np.pi)
  )
  return mean.reshape(t, k), loglik


def _simulate(a, q, c, r, t, rng):
  z = np.zeros((t, len(a)))
  for i in range(1, t):
    z[i] = a @ z[i - 1] + rng.multivariate_normal(np.zeros(len(a)), q)
  return z @ c.T + rng.standard_normal((t, len(c))) * np.sqrt(r)


def test_steady_state_smoother_and_likelihood_equal_the_dense_computation():
  rng = np.random.default_rng(0)
  a = np.array([[0.9, 0.2], [-0.2, 0.8]])
  q = np.array([[0.3, 0.05], [0.05, 0.2]])
  c, d, r = rng.standard_normal((6, 2)), rng.standard_normal(6), rng.uniform(0.2, 1.0, 6)
  y = _simulate(a, q, c, r, 40, rng) + d
  with jax.enable_x64(True):
    p = lds.LDS(*map(np.asarray, (a, q, c, d, r)))
    st = lds.steady_state(p, np.eye(2), len(y))
    mean, _, loglik = lds.smooth(p, st, y)
    ref_mean, ref_loglik = _dense_posterior(p, y, np.asarray(st.p_pred))
    par_mean, _, par_loglik = lds.smooth(p, st, y, parallel=True)  # the doubling schedule
  np.testing.assert_allclose(np.asarray(mean), ref_mean, atol=1e-6)
  np.testing.assert_allclose(float(loglik), ref_loglik, rtol=1e-9)
  np.testing.assert_allclose(lds.smoothed_means(p, y), ref_mean, atol=1e-6)
  np.testing.assert_allclose(np.asarray(par_mean), ref_mean, atol=1e-6)
  np.testing.assert_allclose(float(par_loglik), ref_loglik, rtol=1e-9)


def test_the_doubling_recursion_equals_the_sequential_scan_at_every_length():
  """x_t = F x_{t-1} + b_t by doubling equals the sequential scan (float64, 1e-10) at lengths
  that are and are not powers of two (the smoother on it: the dense test above)."""
  rng = np.random.default_rng(3)
  f = 0.3 * rng.standard_normal((4, 4))
  with jax.enable_x64(True):
    for t in (1, 2, 7, 64, 100):
      b = rng.standard_normal((t, 4))
      np.testing.assert_allclose(
        np.asarray(lds.recursion(f, b, parallel=True)), np.asarray(lds.recursion(f, b)), atol=1e-10
      )


def test_em_never_lowers_the_likelihood():
  rng = np.random.default_rng(1)
  a = np.diag([0.95, 0.9, 0.8])
  y = _simulate(a, 0.1 * np.eye(3), rng.standard_normal((20, 3)), np.full(20, 0.25), 500, rng)
  for k in (1, 3, 5):
    _, lls = lds.fit(y, k, iters=25)
    assert np.all(np.diff(lls) >= -1e-6 * abs(lls[-1])), (k, np.diff(lls).min())


def _rotations(states: int, neurons: int, time: int, seed: int) -> Dataset:
  """A layer driven by states/2 damped rotations (a non-diagonal A), linear readout, noise."""
  rng = np.random.default_rng(seed)
  a = np.zeros((states, states))
  for i in range(0, states, 2):
    th, rho = rng.uniform(0.1, 0.4), rng.uniform(0.9, 0.97)
    a[i : i + 2, i : i + 2] = rho * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  q = np.eye(states) * 0.1
  c = rng.standard_normal((neurons, states))
  c /= np.linalg.norm(c, axis=0) / np.sqrt(neurons / states)
  x = _simulate(a, q, c, rng.uniform(0.5, 1.5, neurons), time, rng)
  return Dataset(
    x_LTN=x[None].astype(np.float32), layer_names=["0"], name="array", true_latent={"0": states}
  )


def test_lds_baseline_chooses_the_state_dimension():
  # Two generators with a known state dimension: independent AR(1) states (family i) and damped
  # rotations; the LDS baseline under the dimension rule answers each one's state dimension.
  latents = (1, 2, 3, 4, 6, 8)
  cfg = config.Settings(latents=latents, seeds=2, baselines=("lds",), bootstrap=50)
  for ds in (
    synthetic.make_linear_gaussian(true_latents=(3,), neurons=40, time=1500, seed=3),
    _rotations(4, 40, 1500, seed=4),
  ):
    prep = splits.prepare(ds, cfg)
    chosen = evaluate.baseline_choices(prep, cfg)["lds"]
    assert chosen == {n: k for n, k in ds.true_latent.items()}, (chosen, ds.true_latent)
