"""Shared pieces of the generated families: smooth latent signals and a Dataset of layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nmas_jax.data.dataset import Dataset
from nmas_jax.errors import UserError


def smooth_signals(
  rng: np.random.Generator, dim: int, time: int, timescale: float = 8.0, spread: float = 4.0
) -> np.ndarray:
  """[time, dim] independent Gaussian AR(1) signals with correlation time `timescale` bins (each
  its own, from 0.5x to 2x) and variances log-spaced over `spread`x (mean 1): smooth latent
  signals of exactly `dim` dimensions, none of them negligible."""
  taus = timescale * np.exp(rng.uniform(np.log(0.5), np.log(2.0), dim))
  a = np.exp(-1.0 / taus)
  x = np.empty((time, dim))
  x[0] = rng.standard_normal(dim)
  eps = rng.standard_normal((time, dim)) * np.sqrt(1 - a**2)
  for t in range(1, time):
    x[t] = a * x[t - 1] + eps[t]
  x = (x - x.mean(axis=0)) / x.std(axis=0)
  var = np.exp(np.linspace(0.0, -np.log(spread), dim)) if dim > 1 else np.ones(1)
  return x * np.sqrt(rng.permutation(var / var.mean()))


def stack_layers(
  name: str, true_latents: Sequence[int], neurons: int, make, meta: dict, counts: bool = False
) -> Dataset:
  """A Dataset of one layer per true dimension, `make(dim)` -> activity [time, neurons], or
  (activity, its noiseless mean [time, neurons]) kept as `rates_LTN` (rates_r2, the oracle)."""
  for dim in true_latents:
    if dim > neurons:
      raise UserError(f"true dimension {dim} exceeds {neurons} neurons")
  made = [m if isinstance(m, tuple) else (m, None) for m in map(make, true_latents)]
  x = np.stack([m[0] for m in made]).astype(np.float32)
  clean = [m[1] for m in made]
  names = tuple(str(i) for i in range(len(true_latents)))
  return Dataset(
    x,
    names,
    name,
    dict(zip(names, map(int, true_latents))),
    {**meta, "true_latents": list(map(int, true_latents)), "neurons": neurons},
    counts=counts,
    rates_LTN=None if any(c is None for c in clean) else np.stack(clean).astype(np.float32),
  )
