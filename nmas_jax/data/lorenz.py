"""Lorenz generators with a known answer: Poisson counts of a 3-D Lorenz trajectory, as one long
recording (`make_lorenz`) or as the LFADS benchmark's short trials (`make_lorenz_trials`)."""

from __future__ import annotations

import numpy as np

from nmas_jax.data.dataset import Dataset

LORENZ = dict(sigma=10.0, rho=28.0, beta=8.0 / 3.0, dt=0.01, every=3)


def _lorenz_run(s_B3: np.ndarray, bins: int, burn_in: int = 0) -> np.ndarray:
  """Lorenz (10, 28, 8/3) states [bins, B, 3] from starts [B, 3]: RK4 with dt=0.01, one bin every
  3 steps, after `burn_in` steps."""
  sigma, rho, beta, dt, every = (LORENZ[k] for k in ("sigma", "rho", "beta", "dt", "every"))

  def f(s):
    x, y, z = s[..., 0], s[..., 1], s[..., 2]
    return np.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], axis=-1)

  s = np.array(s_B3, dtype=np.float64)
  out = np.empty((bins, *s.shape))
  for t in range(burn_in + bins * every):
    k1 = f(s)
    k2 = f(s + dt / 2 * k1)
    k3 = f(s + dt / 2 * k2)
    k4 = f(s + dt * k3)
    s = s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    if t >= burn_in and (t - burn_in) % every == 0:
      out[(t - burn_in) // every] = s
  return out


def _lorenz_readout(
  rng: np.random.Generator, neurons: int, rate_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
  """Random unit-norm weights [3, neurons] and log baselines [neurons] (log-uniform rates)."""
  w_3N = rng.standard_normal((3, neurons))
  w_3N /= np.linalg.norm(w_3N, axis=0, keepdims=True)
  return w_3N, rng.uniform(np.log(rate_range[0]), np.log(rate_range[1]), neurons)


def make_lorenz(
  *,
  neurons: int = 60,
  time: int = 6000,
  layers: int = 1,
  rate_range: tuple[float, float] = (0.05, 0.5),
  gain: float = 0.7,
  whiten: bool = False,
  seed: int = 0,
) -> Dataset:
  """The LFADS Lorenz benchmark: 3-D Lorenz states -> N neurons -> Poisson counts (family iii).

  sigma=10, rho=28, beta=8/3, RK4 with dt=0.01, one bin every 3 steps; each
  state z-scored; log rate_n(t) = b_n + gain * w_n . z(t), w_n a random unit
  vector and exp(b_n) a per-neuron baseline rate drawn log-uniformly from
  `rate_range` spikes per bin, so log-rates are linear in the 3-D state (true
  linear dimension 3; the attractor itself is about 2.06-dimensional). Each
  layer is its own trajectory and weights.

  z-scoring each coordinate leaves x and y correlated, so the third principal
  direction of the log-rates carries only a few percent of their variance.
  `whiten=True` instead rotates the states onto their principal axes at unit
  variance, so all three directions matter equally (same trajectory, weights and
  baselines; the axes signed by `_standardise`, as in `make_lorenz_trials`, so
  the data are the same on every LAPACK).
  """
  rng = np.random.default_rng(seed)
  out, rates = [], []
  for _ in range(layers):
    start = rng.normal(0.0, 1.0, (1, 3)) + np.array([0.0, 1.0, 25.0])
    states = _lorenz_run(start, time, burn_in=500)[:, 0]  # 500 burn-in steps onto the attractor
    centred = states - states.mean(axis=0)
    z_T3 = centred @ _standardise(centred, whiten)
    w_3N, log_base_N = _lorenz_readout(rng, neurons, rate_range)
    rate = np.exp(log_base_N + gain * z_T3 @ w_3N)
    out.append(rng.poisson(rate).astype(np.float64))
    rates.append(rate)
  names = tuple(str(i) for i in range(layers))
  meta = dict(
    neurons=neurons,
    time=time,
    rate_range=list(rate_range),
    gain=gain,
    seed=seed,
    whiten=whiten,
    family="iii: Poisson, exp link of Lorenz latents",
    generator="Lorenz (10, 28, 8/3), RK4 dt=0.01, bin = 3 steps, Poisson(exp(b_n + linear))",
  )
  return Dataset(
    np.stack(out).astype(np.float32),
    names,
    "lorenz",
    {n: 3 for n in names},
    meta,
    counts=True,
    rates_LTN=np.stack(rates).astype(np.float32),
  )


def _standardise(centred_T3: np.ndarray, whiten: bool) -> np.ndarray:
  """[3, 3] map from centred states to unit-variance coordinates: each coordinate z-scored, or
  (`whiten`) the principal axes at unit variance, each axis signed so that its largest entry is
  positive (the same data on every LAPACK)."""
  cov = centred_T3.T @ centred_T3 / len(centred_T3)
  if not whiten:
    return np.diag(1.0 / np.sqrt(np.diag(cov)))
  var, axes = np.linalg.eigh(cov)
  axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(3)])
  return axes / np.sqrt(var)


def make_lorenz_trials(
  *,
  trials: int = 600,
  time: int = 50,
  neurons: int = 40,
  layers: int = 1,
  rate_range: tuple[float, float] = (0.1, 0.5),
  gain: float = 1.0,
  whiten: bool = True,
  seed: int = 0,
) -> Dataset:
  """The LFADS paper's Lorenz benchmark shape: many short trials, each from its own initial
  condition on the attractor, Poisson counts through an exp link with per-neuron baselines.

  Trial starts are random points of one long trajectory (after burn-in); states are whitened with
  that trajectory's statistics (rotated onto its principal axes at unit variance, as
  `make_lorenz(whiten=True)`); log rate = b_n + gain * w_n . z(t) as `make_lorenz`. The time axis
  is the trials laid end to end (`Dataset.trial_length` = `time`); the true rates are kept
  (`Dataset.rates_LTN`). True dimension 3, and all three directions matter: with `whiten=False`
  (each coordinate z-scored, x and y correlated) the third direction carries so little that the
  dimension rule applied to the true rates (`dimension.oracle_gains`) answers 2
  (docs/notes/2026-11-28-dimension.md).
  """
  rng = np.random.default_rng(seed)
  out, rates = [], []
  for _ in range(layers):
    start = rng.normal(0.0, 1.0, (1, 3)) + np.array([0.0, 1.0, 25.0])
    long_T3 = _lorenz_run(start, 20 * trials, burn_in=500)[:, 0]
    mean = long_T3.mean(axis=0)
    starts = long_T3[rng.choice(len(long_T3), trials, replace=False)]
    to_unit_33 = _standardise(long_T3 - mean, whiten)
    z_TR3 = (_lorenz_run(starts, time) - mean) @ to_unit_33  # [time, trials, 3]
    w_3N, log_base_N = _lorenz_readout(rng, neurons, rate_range)
    rate = np.exp(log_base_N + gain * z_TR3.transpose(1, 0, 2) @ w_3N).reshape(
      trials * time, neurons
    )
    out.append(rng.poisson(rate).astype(np.float64))
    rates.append(rate)
  names = tuple(str(i) for i in range(layers))
  meta = dict(
    trials=trials,
    trial_length=time,
    neurons=neurons,
    rate_range=list(rate_range),
    gain=gain,
    whiten=whiten,
    seed=seed,
    family="iii: Poisson, exp link of Lorenz latents, in trials",
    generator="Lorenz (10, 28, 8/3), RK4 dt=0.01, bin = 3 steps, one random initial "
    "condition on the attractor per trial, Poisson(exp(b_n + linear))",
  )
  return Dataset(
    np.stack(out).astype(np.float32),
    names,
    "lorenz_trials",
    {n: 3 for n in names},
    meta,
    counts=True,
    trial_length=time,
    rates_LTN=np.stack(rates).astype(np.float32),
  )
