"""Validation families on the shapes recorded data has, each with a known answer.

`make_ring` (head direction: one circular variable, von Mises tuning), `make_torus` (grid-cell
like: two circular variables), `make_sequence` (songbird HVC: each neuron bursts once per
cycle of a sparse sequence) and `make_calcium` (dF/F of spikes driven by k signals, each neuron
through its own indicator kernel). Linear methods are known to count too many dimensions on the
first three, and per-neuron filtering inflates every linear count on the last.

The answer is what a per-time-step decoder of the latent needs: a circle needs 2 latents (it
does not embed in 1), a torus 3 (it embeds in R^3; its flat embedding uses 4, see
`make_torus`), a sequence's phase is a circle (2), and calcium's drive has k dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nmas_jax.data.dataset import Dataset
from nmas_jax.data.generate import smooth_signals, stack_layers


def _ar1(rng: np.random.Generator, time: int, timescale: float) -> np.ndarray:
  """[time] a unit-variance AR(1) signal of correlation time `timescale` bins."""
  a = np.exp(-1.0 / timescale)
  v = np.empty(time)
  v[0] = rng.standard_normal()
  eps = rng.standard_normal(time) * np.sqrt(1 - a**2)
  for t in range(1, time):
    v[t] = a * v[t - 1] + eps[t]
  return v


def _angles(rng: np.random.Generator, time: int, turn: float, timescale: float = 20.0):
  """[time] a smooth random walk on the circle: an AR(1) angular velocity (correlation time
  `timescale` bins) of std `turn` radians per bin, so the walk covers the circle many times in a
  few thousand bins."""
  return np.cumsum(turn * _ar1(rng, time, timescale)) + rng.uniform(0, 2 * np.pi)


def _von_mises(theta_T: np.ndarray, pref_N: np.ndarray, kappa_N: np.ndarray) -> np.ndarray:
  """[time, neurons] tuning curves exp(kappa (cos(theta - pref) - 1)), peak 1."""
  return np.exp(kappa_N * (np.cos(theta_T[:, None] - pref_N[None, :]) - 1.0))


def _tuning(rng: np.random.Generator, angle_T: np.ndarray, neurons: int, kappa) -> np.ndarray:
  """[time, neurons] von Mises tuning to `angle_T`: preferred angles uniform, concentrations
  uniform in `kappa` (low, high), gains 1-2."""
  pref, conc = rng.uniform(0, 2 * np.pi, neurons), rng.uniform(*kappa, neurons)
  return rng.uniform(1.0, 2.0, neurons) * _von_mises(angle_T, pref, conc)


def _noisy_layer(
  name: str, rng: np.random.Generator, rates_TN: np.ndarray, truth: int, noise_std: float, **meta
) -> Dataset:
  """One layer: `rates_TN` plus Gaussian noise, its noiseless mean kept as `rates_LTN`."""
  x = rates_TN + noise_std * rng.standard_normal(rates_TN.shape)
  time, neurons = rates_TN.shape
  return Dataset(
    x[None].astype(np.float32),
    ("0",),
    name,
    {"0": int(truth)},
    dict(time=time, neurons=neurons, noise_std=noise_std, **meta),
    rates_LTN=rates_TN[None].astype(np.float32),
  )


def make_ring(
  *, neurons: int = 120, time: int = 4000, noise_std: float = 0.3, seed: int = 0
) -> Dataset:
  """Head-direction-like activity: one angle drifting around the circle, each neuron tuned to it
  by a von Mises curve (preferred angle uniform, concentration 1-4, gain 1-2), plus Gaussian
  noise. Manifold dimension 2 (a circle); PCA counts more (each tuning curve's harmonics)."""
  rng = np.random.default_rng(seed)
  rates = _tuning(rng, _angles(rng, time, turn=0.15), neurons, (1.0, 4.0))
  return _noisy_layer(
    "ring",
    rng,
    rates,
    2,
    noise_std,
    seed=seed,
    family="ring: one circular variable",
    generator="a smooth random walk on the circle, von Mises tuning, Gaussian noise",
  )


def make_torus(
  *, neurons: int = 200, time: int = 4000, noise_std: float = 0.3, seed: int = 0
) -> Dataset:
  """Grid-cell-like activity: two independent angles, each neuron tuned to both (a product of
  von Mises curves, concentrations 0.5-2, gain 1-2). Truth 3: a torus embeds in R^3, so a
  per-time-step decoder of 3 latents can describe it; its flat embedding (cos and sin of both
  angles) uses 4, which is what a sweep that cannot find the 3-D embedding answers."""
  rng = np.random.default_rng(seed)
  t1, t2 = _angles(rng, time, turn=0.15), _angles(rng, time, turn=0.15)
  tune = lambda th: _von_mises(th, rng.uniform(0, 2 * np.pi, neurons), rng.uniform(0.5, 2, neurons))
  rates = rng.uniform(1.0, 2.0, neurons) * tune(t1) * tune(t2)
  return _noisy_layer(
    "torus",
    rng,
    rates,
    3,
    noise_std,
    seed=seed,
    flat_embedding=4,
    family="torus: two circular variables",
    generator="two smooth random walks on the circle, products of von Mises tuning, Gaussian noise",
  )


def make_sequence(
  *,
  neurons: int = 120,
  time: int = 4000,
  period: float = 40.0,
  noise_std: float = 0.3,
  seed: int = 0,
) -> Dataset:
  """A sparse sequence (songbird HVC-like): a phase advancing by one cycle per about `period`
  bins (speed jittered +-20% smoothly), each neuron bursting briefly at its own phase (von
  Mises, concentration 15-30: about 2-3 bins per burst; gain 1-2). Manifold dimension 2 (the
  phase's circle); linear methods count many more, one per few bursts."""
  rng = np.random.default_rng(seed)
  speed = 2 * np.pi / period * (1.0 + 0.2 * np.tanh(_ar1(rng, time, 50.0)))
  phase = np.cumsum(speed) + rng.uniform(0, 2 * np.pi)
  rates = _tuning(rng, phase, neurons, (15.0, 30.0))
  return _noisy_layer(
    "sequence",
    rng,
    rates,
    2,
    noise_std,
    seed=seed,
    period=period,
    family="sequence: a sparse sequence of bursts",
    generator="a phase advancing once per period, brief von Mises bursts, Gaussian noise",
  )


CALCIUM_TRUE_LATENTS = (3, 7)


def make_calcium(
  *,
  true_latents: Sequence[int] = CALCIUM_TRUE_LATENTS,
  neurons: int = 150,
  time: int = 4000,
  taus: tuple[float, float] = (1.0, 4.0),
  noise_std: float = 0.2,
  seed: int = 0,
) -> Dataset:
  """Calcium imaging of spikes driven by k latents: per layer, `true_latents[l]` slow smooth
  signals (correlation time about 30 bins) drive Poisson spikes through exp(b_n + w_n . z) (0.1-1
  spikes per bin), and each neuron's fluorescence is its spikes convolved with its own
  indicator's exponential decay (time constant `taus` bins, uniform per neuron), scaled, plus
  Gaussian noise. The dimension of the drive is k; the per-neuron kernels smear it in time, so
  linear methods see more."""
  rng = np.random.default_rng(seed)

  def make(dim):
    z = smooth_signals(rng, dim, time, timescale=30.0)
    w = rng.standard_normal((dim, neurons)) * (0.8 / np.sqrt(dim))
    base = rng.uniform(np.log(0.1), np.log(1.0), neurons)
    rate = np.exp(base + z @ w)
    spikes = rng.poisson(rate)
    decay = np.exp(-1.0 / rng.uniform(*taus, neurons))
    f, mean = np.empty((time, neurons)), np.empty((time, neurons))  # of spikes, of rates
    f[0], mean[0] = spikes[0], rate[0]
    for t in range(1, time):
      f[t] = decay * f[t - 1] + spikes[t]
      mean[t] = decay * mean[t - 1] + rate[t]
    amp = rng.uniform(0.5, 1.5, neurons)
    return amp * f + noise_std * rng.standard_normal((time, neurons)), amp * mean

  return stack_layers(
    "calcium",
    true_latents,
    neurons,
    make,
    dict(
      time=time,
      taus=list(taus),
      noise_std=noise_std,
      seed=seed,
      family="calcium: filtered spikes of k drives",
      generator="slow AR(1) signals, Poisson(exp) spikes, per-neuron exponential indicator "
      "kernels, Gaussian noise",
    ),
  )
