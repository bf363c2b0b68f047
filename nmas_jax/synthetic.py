"""Built-in data with a known answer: layered oscillator data and the LFADS Lorenz benchmark."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from nmas_jax.data import Dataset
from nmas_jax.errors import UserError

SYNTHETIC_TRUE_LATENTS = (10, 25, 50)


def _latent_dynamics(rng: np.random.Generator, dim: int, time: int) -> np.ndarray:
  """Noisy limit-cycle oscillators, whitened: [time, dim] with unit variance in all dims.

  Each pair of dimensions is one Stuart-Landau oscillator (nonlinear amplitude
  dynamics around a limit cycle, its own frequency, phase and amplitude
  noise); an odd dimension adds the cosine of one more. Frequencies are fast
  enough (5-25 bins a cycle) that short held-out blocks see the same
  statistics as training. Whitening (a linear map) keeps the trajectory
  exactly `dim`-dimensional and gives every direction equal variance, so the
  true dimension is sharp.
  """
  n_osc = (dim + 1) // 2
  omega = rng.uniform(2 * np.pi / 25, 2 * np.pi / 5, n_osc)
  phase = rng.uniform(0, 2 * np.pi, n_osc)
  r = np.ones(n_osc)
  r_T, phase_T = np.empty((time, n_osc)), np.empty((time, n_osc))
  for t in range(time):
    r = np.abs(r + 0.1 * r * (1.0 - r ** 2) + 0.15 * rng.standard_normal(n_osc))
    phase = phase + omega + 0.3 * rng.standard_normal(n_osc)
    r_T[t], phase_T[t] = r, phase
  xs = np.concatenate([r_T * np.cos(phase_T), r_T * np.sin(phase_T)], axis=1)[:, :dim]
  xs -= xs.mean(axis=0)
  u, _, _ = np.linalg.svd(xs, full_matrices=False)
  return u * np.sqrt(time)  # [time, dim], orthogonal columns of variance 1.


def make_synthetic(*, true_latents: Sequence[int] = SYNTHETIC_TRUE_LATENTS, neurons: int = 200,
                   time: int = 2000, noise: str = "gaussian", noise_std: float = 0.5,
                   seed: int = 0) -> Dataset:
  """Layers of neurons driven by low-dimensional nonlinear dynamics of known dimension.

  Layer l has `true_latents[l]` latent dimensions mapped to `neurons` through
  random weights. Gaussian noise: x = W z + noise_std * eps (signal variance
  about 1 per neuron). Poisson noise: counts with rate exp(0.5 W z - 1).
  """
  if noise not in ("gaussian", "poisson"):
    raise UserError(f"unknown synthetic noise {noise!r}: choose gaussian or poisson")
  rng = np.random.default_rng(seed)
  layers = []
  for dim in true_latents:
    if dim > neurons:
      raise UserError(f"true dimension {dim} exceeds {neurons} neurons")
    z_TD = _latent_dynamics(rng, dim, time)
    w_DN = rng.standard_normal((dim, neurons)) / np.sqrt(dim)
    signal = z_TD @ w_DN
    if noise == "gaussian":
      x = signal + noise_std * rng.standard_normal(signal.shape)
    else:
      x = rng.poisson(np.exp(0.5 * signal - 1.0)).astype(np.float64)
    layers.append(x)
  names = tuple(str(i) for i in range(len(true_latents)))
  meta = dict(true_latents=list(map(int, true_latents)), neurons=neurons, time=time, noise=noise,
              noise_std=noise_std if noise == "gaussian" else None, seed=seed,
              generator="whitened noisy limit-cycle oscillators, random linear readout")
  return Dataset(np.stack(layers).astype(np.float32), names, "synthetic",
                 dict(zip(names, map(int, true_latents))), meta)


def make_lorenz(*, neurons: int = 60, time: int = 3000, layers: int = 1, base_rate: float = 1.0,
                gain: float = 0.9, seed: int = 0) -> Dataset:
  """The LFADS Lorenz benchmark: 3-D Lorenz states -> N neurons -> Poisson counts.

  sigma=10, rho=28, beta=8/3, RK4 with dt=0.01, one bin every 3 steps; each
  state z-scored; rate_n(t) = base_rate * exp(gain * w_n . z(t)) with w_n a
  random unit vector, so log-rates are linear in the 3-D state (true dimension 3).
  Each layer is its own trajectory and weights.
  """
  rng = np.random.default_rng(seed)
  sigma, rho, beta, dt, every = 10.0, 28.0, 8.0 / 3.0, 0.01, 3

  def f(s):
    return np.array([sigma * (s[1] - s[0]), s[0] * (rho - s[2]) - s[1], s[0] * s[1] - beta * s[2]])

  out = []
  for _ in range(layers):
    s = rng.normal(0.0, 1.0, 3) + np.array([0.0, 1.0, 25.0])
    states = np.empty((time, 3))
    for t in range(500 + time * every):  # 500 burn-in steps onto the attractor
      k1 = f(s); k2 = f(s + dt / 2 * k1); k3 = f(s + dt / 2 * k2); k4 = f(s + dt * k3)
      s = s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
      if t >= 500 and (t - 500) % every == 0:
        states[(t - 500) // every] = s
    z_T3 = (states - states.mean(axis=0)) / states.std(axis=0)
    w_3N = rng.standard_normal((3, neurons))
    w_3N /= np.linalg.norm(w_3N, axis=0, keepdims=True)
    rate = base_rate * np.exp(gain * z_T3 @ w_3N)
    out.append(rng.poisson(rate).astype(np.float64))
  names = tuple(str(i) for i in range(layers))
  meta = dict(neurons=neurons, time=time, base_rate=base_rate, gain=gain, seed=seed,
              generator="Lorenz (10, 28, 8/3), RK4 dt=0.01, bin = 3 steps, Poisson(exp(linear))")
  return Dataset(np.stack(out).astype(np.float32), names, "lorenz", {n: 3 for n in names}, meta)
