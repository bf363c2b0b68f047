"""Built-in data with known answers, in families the dimension estimate is validated on.

`make_curved` (--dataset=synthetic, the main job's data): smooth signals, each read by its own
neurons through sigmoidal tuning curves (a curved manifold on which PCA and FA count too many
dimensions); (i) `make_linear_gaussian` (--dataset=linear_gaussian): smooth latent signals, a
linear readout, Gaussian noise (PCA's model is the true one); (ii) `make_nonlinear`: the same
signals through a saturating readout of random mixtures; (iii) `make_lorenz`: Poisson counts
with an exp link of 3-D Lorenz latents (the LFADS benchmark); (iv) `make_independent`: neurons
with their own dynamics and nothing shared (answer 0); rings, tori, sparse sequences and calcium
imaging are in `nmas_jax.data.manifolds`. `make_synthetic` (oscillators,
whitened) is kept for tests. docs/validation.md has the validation table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nmas_jax.data.dataset import Dataset
from nmas_jax.data.generate import smooth_signals, stack_layers
from nmas_jax.data.lorenz import make_lorenz, make_lorenz_trials
from nmas_jax.data.manifolds import make_calcium, make_ring, make_sequence, make_torus
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
    r = np.abs(r + 0.1 * r * (1.0 - r**2) + 0.15 * rng.standard_normal(n_osc))
    phase = phase + omega + 0.3 * rng.standard_normal(n_osc)
    r_T[t], phase_T[t] = r, phase
  xs = np.concatenate([r_T * np.cos(phase_T), r_T * np.sin(phase_T)], axis=1)[:, :dim]
  xs -= xs.mean(axis=0)
  u, _, _ = np.linalg.svd(xs, full_matrices=False)
  return u * np.sqrt(time)  # [time, dim], orthogonal columns of variance 1.


def make_synthetic(
  *,
  true_latents: Sequence[int] = SYNTHETIC_TRUE_LATENTS,
  neurons: int = 200,
  time: int = 2000,
  noise: str = "gaussian",
  noise_std: float = 0.5,
  seed: int = 0,
) -> Dataset:
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
  meta = dict(
    true_latents=list(map(int, true_latents)),
    neurons=neurons,
    time=time,
    noise=noise,
    noise_std=noise_std if noise == "gaussian" else None,
    seed=seed,
    generator="whitened noisy limit-cycle oscillators, random linear readout",
  )
  return Dataset(
    np.stack(layers).astype(np.float32),
    names,
    "oscillators",
    dict(zip(names, map(int, true_latents))),
    meta,
    counts=noise == "poisson",
  )


LINEAR_TRUE_LATENTS = (7, 18, 40)


def make_linear_gaussian(
  *,
  true_latents: Sequence[int] = LINEAR_TRUE_LATENTS,
  neurons: int = 200,
  time: int = 4000,
  noise_std: float = 1.0,
  seed: int = 0,
) -> Dataset:
  """Family (i): per layer, `true_latents[l]` smooth signals (`smooth_signals`), a random linear
  readout to `neurons`, and Gaussian noise of a different std per neuron (0.5x-1.5x
  `noise_std`, against a signal variance of about 1 per neuron).

  4000 bins by default: at 2000 (1400 training bins) the LSTM autoencoder's test error was
  3.5% above PCA's at the chosen size, at 4000 about 1% (docs/notes/2026-11-28-dimension.md), a
  sample cost of
  the recurrent encoder, not a fault of the rule."""
  rng = np.random.default_rng(seed)

  def make(dim):
    w = rng.standard_normal((dim, neurons)) / np.sqrt(dim)
    noise = noise_std * rng.uniform(0.5, 1.5, neurons)
    signal = smooth_signals(rng, dim, time) @ w
    return signal + noise * rng.standard_normal((time, neurons)), signal

  return stack_layers(
    "synthetic",
    true_latents,
    neurons,
    make,
    dict(
      time=time,
      noise_std=noise_std,
      seed=seed,
      family="i: linear-Gaussian",
      generator="smooth AR(1) signals, random linear readout, Gaussian noise",
    ),
  )


NONLINEAR_TRUE_LATENTS = (3, 6, 12)


def make_nonlinear(
  *,
  true_latents: Sequence[int] = NONLINEAR_TRUE_LATENTS,
  neurons: int = 200,
  time: int = 4000,
  gain: float = 2.5,
  noise_std: float = 0.3,
  seed: int = 0,
) -> Dataset:
  """Family (ii): per layer, `true_latents[l]` smooth signals through a random mixing and a
  saturating readout, x_n = tanh(gain * w_n . z + c_n) + noise, with unit-norm w_n and random
  offsets c_n: the activity lies on a curved k-dimensional manifold, so a linear method
  needs more dimensions than k to describe it. 4000 bins by default, as family (i): at 2000
  the MLP-decoder model of the 12-signal layer scored 4% worse than PCA on test
  (docs/notes/2026-11-28-dimension.md)."""
  rng = np.random.default_rng(seed)

  def make(dim):
    w = rng.standard_normal((dim, neurons))
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    offset = rng.uniform(-1.0, 1.0, neurons)
    drive = gain * smooth_signals(rng, dim, time) @ w + offset
    return np.tanh(drive) + noise_std * rng.standard_normal((time, neurons)), np.tanh(drive)

  return stack_layers(
    "nonlinear",
    true_latents,
    neurons,
    make,
    dict(
      time=time,
      gain=gain,
      noise_std=noise_std,
      seed=seed,
      family="ii: nonlinear readout",
      generator="smooth AR(1) signals, tanh(gain * unit-norm mixing + offset), Gaussian noise",
    ),
  )


CURVED_TRUE_LATENTS = (14, 20, 30)


def make_curved(
  *,
  true_latents: Sequence[int] = CURVED_TRUE_LATENTS,
  neurons: int = 200,
  time: int = 4000,
  width: float = 0.7,
  noise_std: float = 0.3,
  seed: int = 0,
) -> Dataset:
  """The built-in data (--dataset=synthetic): per layer, `true_latents[l]` smooth signals, each
  read by its own neurons through a sigmoidal tuning curve, x_n = a_n tanh(s_n (z_i(n) - mu_n) /
  width) + noise, with thresholds mu_n across the signal's range, random signs s_n and gains
  a_n in [0.5, 1.5]. The activity lies on a curved k-dimensional manifold, and each signal's
  saturating curves span several linear dimensions, so PCA and FA count more than k while a
  nonlinear decoder needs k."""
  rng = np.random.default_rng(seed)

  def make(dim):
    z_TD = smooth_signals(rng, dim, time)
    which = rng.permutation(np.arange(neurons) % dim)  # every signal read by its own neurons
    z_TN = z_TD[:, which] / z_TD[:, which].std(axis=0)
    mu = rng.uniform(-1.5, 1.5, neurons)
    amp = rng.uniform(0.5, 1.5, neurons)
    sign = rng.choice([-1.0, 1.0], neurons)
    rates = amp * np.tanh(sign * (z_TN - mu) / width)
    return rates + noise_std * rng.standard_normal((time, neurons)), rates

  return stack_layers(
    "synthetic",
    true_latents,
    neurons,
    make,
    dict(
      time=time,
      width=width,
      noise_std=noise_std,
      seed=seed,
      family="curved: sigmoidal tuning",
      generator="smooth AR(1) signals, each read by its own neurons through tanh tuning curves "
      "with thresholds across its range, Gaussian noise",
    ),
  )


def make_independent(
  *, layers: int = 1, neurons: int = 100, time: int = 2000, counts: bool = False, seed: int = 0
) -> Dataset:
  """Family (iv): every neuron its own smooth signal (AR(1), like the others' latents) and nothing
  shared, as Gaussian activity or Poisson counts (rates 0.05-0.5 per bin): dimension 0."""
  rng = np.random.default_rng(seed)

  def make(_):
    x = smooth_signals(rng, neurons, time, spread=1.0) + 0.5 * rng.standard_normal((time, neurons))
    if not counts:
      return x
    base = rng.uniform(np.log(0.05), np.log(0.5), neurons)
    return rng.poisson(np.exp(base + 0.5 * x)).astype(np.float64)

  return stack_layers(
    "independent",
    [0] * layers,
    neurons,
    make,
    dict(
      time=time,
      seed=seed,
      counts=counts,
      family="iv: independent neurons",
      generator="an AR(1) signal of its own per neuron"
      + (", Poisson(exp)" if counts else " plus Gaussian noise"),
    ),
    counts=counts,
  )


def _multiscale(bands, timescales, neurons, time, noise_std, spread, seed):
  """make_multiscale's draw: ([time, bands[b]] signals per band, [time, neurons] activity)."""
  rng = np.random.default_rng(seed)
  z_by_band = [
    smooth_signals(rng, k, time, timescale=tau, spread=spread) if k else np.zeros((time, 0))
    for k, tau in zip(bands, timescales)
  ]
  z = np.concatenate(z_by_band, axis=1)
  w = rng.standard_normal((z.shape[1], neurons))
  w /= np.linalg.norm(w, axis=1, keepdims=True) * np.sqrt(z.shape[1] / neurons)
  x = z @ w + noise_std * rng.uniform(0.5, 1.5, neurons) * rng.standard_normal((time, neurons))
  return z_by_band, x


def make_multiscale(
  *,
  bands: Sequence[int] = (4, 3),
  timescales: Sequence[float] = (2, 50),
  neurons: int = 100,
  time: int = 6000,
  noise_std: float = 1.0,
  spread: float = 1.0,
  seed: int = 0,
) -> Dataset:
  """Known counts per timescale: `bands[b]` smooth signals with correlation times around
  `timescales[b]` bins (`smooth_signals`: each 0.5x-2x of it, variances over `spread`x) in one
  layer, through a random linear readout whose rows have equal norm, with Gaussian noise (as
  family i). The answer of --model=multiscale with --timescales equal to `timescales`: `bands`
  (`meta["true_bands"]`), total sum(bands); `multiscale_signals` gives the signals.

  Every signal carries the same share of the signal's power by default (`spread` 1, equal-norm
  readout) so that the rule's own answer on the true signals (`dimension.oracle_band_gains`) is
  `bands`: with variances over 4x and a plain Gaussian readout, the weakest (slow) signal fell
  under the rule's 5% on 4 of 10 draws (docs/notes/2026-11-28-dimension.md)."""
  _, x = _multiscale(bands, timescales, neurons, time, noise_std, spread, seed)
  meta = dict(
    time=time,
    neurons=neurons,
    noise_std=noise_std,
    spread=spread,
    seed=seed,
    true_bands=list(map(int, bands)),
    timescales=list(map(float, timescales)),
    generator="smooth AR(1) signals per timescale band, random linear readout of equal "
    "norm per signal, Gaussian noise",
  )
  return Dataset(x[None].astype(np.float32), ("0",), "multiscale", {"0": int(sum(bands))}, meta)


def multiscale_signals(
  *,
  bands: Sequence[int] = (4, 3),
  timescales: Sequence[float] = (2, 50),
  neurons: int = 100,
  time: int = 6000,
  noise_std: float = 1.0,
  spread: float = 1.0,
  seed: int = 0,
) -> list[np.ndarray]:
  """The true signals [time, bands[b]] of each band of `make_multiscale` with the same arguments."""
  return _multiscale(bands, timescales, neurons, time, noise_std, spread, seed)[0]


# The built-in datasets (--dataset=...), one per family.
def power_law_activity(
  alpha: float,
  *,
  neurons: int = 600,
  time: int = 6000,
  dims: int = 300,
  noise_std: float = 0.3,
  seed: int = 0,
) -> np.ndarray:
  """[time, neurons] activity whose shared signal has a power-law spectrum: `dims` independent
  Gaussian latents with variances n^-alpha (n = 1..dims) through a random readout, plus private
  Gaussian noise. The reliable-variance spectrum's known answer (`spectrum.spectrum`)."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((time, dims)) * np.arange(1, dims + 1) ** (-alpha / 2)
  w = rng.standard_normal((dims, neurons)) / np.sqrt(10.0)
  return z @ w + noise_std * rng.standard_normal((time, neurons))


FAMILIES = {
  "synthetic": make_curved,
  "linear_gaussian": make_linear_gaussian,
  "nonlinear": make_nonlinear,
  "lorenz": make_lorenz,
  "lorenz_trials": make_lorenz_trials,
  "independent": make_independent,
  "multiscale": make_multiscale,
  "ring": make_ring,
  "torus": make_torus,
  "sequence": make_sequence,
  "calcium": make_calcium,
}
