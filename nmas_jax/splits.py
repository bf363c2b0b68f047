"""A dataset made ready for a sweep, once: time split, held-out neurons, windows, likelihood, batches.

`prepare` does every data-dependent check and computes everything the loop,
the evaluation and the baselines read about the data (`Prepared`);
`Prepared.place` puts what the jitted step reads onto the device mesh.
Training batches are random windows of the training block, a pure function
of (seed, step); validation uses every non-overlapping window of the
held-out block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import sharding
from nmas_jax.config import Settings
from nmas_jax.data import Dataset
from nmas_jax.errors import UserError


def heldout_mask(num_layers: int, num_neurons: int, fraction: float, seed: int = 0) -> np.ndarray:
  """[layers, neurons] bool, True for neurons hidden from the encoder (co-smoothing).

  A fixed, seeded subset of round(fraction * neurons) neurons per layer.
  """
  n = int(round(fraction * num_neurons))
  if fraction > 0 and (n < 1 or n >= num_neurons):
    raise UserError(f"--heldout_neurons={fraction} leaves {n} of {num_neurons} neurons held out: "
                    "it must hold out at least one and keep at least one")
  rng = np.random.default_rng(seed + 7919)
  mask = np.zeros((num_layers, num_neurons), bool)
  for l in range(num_layers):
    mask[l, rng.choice(num_neurons, n, replace=False)] = True
  return mask


def train_time(num_time: int, train_fraction: float) -> int:
  """Number of leading time bins in the training block; the rest is validation."""
  return int(round(num_time * train_fraction))


def check_window(num_time: int, t_train: int, window: int) -> None:
  """Both blocks must hold at least one whole window."""
  shortest = min(t_train, num_time - t_train)
  if window > shortest:
    raise UserError(
        f"--window={window} is longer than a split: the data has {num_time} time bins "
        f"after binning, {t_train} train / {num_time - t_train} validation; use --window<={shortest}")


def window_starts(seed: jax.Array, step: jax.Array, *, t_train: int, window: int,
                  batch_size: int) -> jax.Array:
  """Random window starts [batch] in the training block: a pure function of (seed, step)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.random.randint(key, (batch_size,), 0, t_train - window + 1)


def window_layers(seed: jax.Array, step: jax.Array, *, num_layers: int, batch_size: int) -> jax.Array:
  """Random layer per window [batch] for models trained on all layers: a pure function of (seed, step)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step), 1)
  return jax.random.randint(key, (batch_size,), 0, num_layers)


def sample_batches(x_LTN: jax.Array, layer_M: jax.Array, seed_M: jax.Array, step: jax.Array, *,
                   t_train: int, window: int, batch_size: int, mix_layers: bool = False) -> jax.Array:
  """Training windows for every model: [models, batch, window, neurons].

  Model m reads layer layer_M[m]; with `mix_layers` each window comes from a
  random layer instead (a shared model of all layers). Gathers exactly the
  windows needed (never a per-model copy of a layer).
  """
  starts_MB = jax.vmap(lambda s: window_starts(s, step, t_train=t_train, window=window,
                                               batch_size=batch_size))(seed_M)
  t_MBW = starts_MB[:, :, None] + jnp.arange(window)[None, None, :]
  if mix_layers:
    layer_MB = jax.vmap(lambda s: window_layers(s, step, num_layers=x_LTN.shape[0],
                                                batch_size=batch_size))(seed_M)
    return x_LTN[layer_MB[:, :, None], t_MBW]
  return x_LTN[layer_M[:, None, None], t_MBW]


def train_windows(x_LTN: np.ndarray, t_train: int, window: int) -> np.ndarray:
  """All non-overlapping windows of the training block: [layers, windows, window, neurons]."""
  n = t_train // window
  v = x_LTN[:, : n * window]
  return v.reshape(v.shape[0], n, window, v.shape[2])


def valid_windows(x_LTN: np.ndarray, t_train: int, window: int) -> np.ndarray:
  """All non-overlapping windows of the held-out block: [layers, windows, window, neurons]."""
  n = (x_LTN.shape[1] - t_train) // window
  v = x_LTN[:, t_train: t_train + n * window]
  return v.reshape(v.shape[0], n, window, v.shape[2])


def resolve_likelihood(likelihood: str, dataset: Dataset) -> str:
  """The observation model in use: `likelihood`, with auto = poisson for Lorenz counts."""
  if likelihood != "auto":
    return likelihood
  return "poisson" if dataset.name == "lorenz" else "gaussian"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A dataset ready for a sweep. With `shared`, one model per (latent, seed) learns all layers.

  Attributes:
    dataset: the activity [layers, time, neurons] and its names.
    likelihood: "gaussian" or "poisson" (auto resolved).
    t_train: leading time bins of the training block; the rest is validation.
    window, batch_size: training windows per step.
    heldout_LN: bool [layers, neurons], neurons the encoder never sees (co-smoothing).
    shared: windows of every layer train one model (no neuron held out).
  """

  dataset: Dataset
  likelihood: str
  t_train: int
  window: int
  batch_size: int
  heldout_LN: np.ndarray
  shared: bool = False

  @property
  def num_neurons(self) -> int:
    return self.dataset.num_neurons

  @property
  def model_layers(self) -> int:
    """Layers on the models axis: one when a shared model learns them all."""
    return 1 if self.shared else self.dataset.num_layers

  @property
  def cosmooth(self) -> bool:
    """Whether models are scored on held-out neurons."""
    return bool(self.heldout_LN.any()) and not self.shared

  def input_mask_LN(self) -> np.ndarray:
    """float32 [model layers, neurons] encoder-input mask: 0 for held-out neurons."""
    if self.shared:
      return np.ones((1, self.num_neurons), np.float32)
    return (~self.heldout_LN).astype(np.float32)

  def valid_LVTN(self) -> np.ndarray:
    """Validation windows [model layers, windows, window, neurons] (a shared model's: all layers')."""
    v = valid_windows(self.dataset.x_LTN, self.t_train, self.window)
    return v.reshape(1, -1, *v.shape[2:]) if self.shared else v

  def valid_block(self) -> np.ndarray:
    """The held-out block as the windows cover it: float64 [layers, windows * window, neurons]."""
    v = valid_windows(self.dataset.x_LTN, self.t_train, self.window)
    return v.reshape(v.shape[0], -1, v.shape[-1]).astype(np.float64)

  def train_block(self) -> np.ndarray:
    """The training block, float64 [layers, t_train, neurons]."""
    return self.dataset.x_LTN[:, : self.t_train].astype(np.float64)

  def place(self, mesh, layer_M: np.ndarray, seed_M: np.ndarray) -> "Placed":
    """What the jitted step and evaluation read, on the mesh: data replicated, model columns sharded."""
    rep, by_model = sharding.replicated(mesh), sharding.models_sharding(mesh)
    return Placed(x_LTN=sharding.put(self.dataset.x_LTN, rep),
                  mask_LN=sharding.put(self.input_mask_LN(), rep),
                  valid_LVTN=sharding.put(self.valid_LVTN(), rep),
                  layer_M=sharding.put(layer_M, by_model), seed_M=sharding.put(seed_M, by_model))


@dataclasses.dataclass(frozen=True)
class Placed:
  """Device arrays of a prepared dataset: data [layers, ...] replicated, [models] sharded."""

  x_LTN: jax.Array
  mask_LN: jax.Array
  valid_LVTN: jax.Array
  layer_M: jax.Array   # which layer's data model m reads
  seed_M: jax.Array    # model m's seed (its batch order)


def prepare(dataset: Dataset, cfg: Settings, shared: bool = False) -> Prepared:
  """Checks `cfg` against the data (one-line UserError) and prepares it for the sweep."""
  if max(cfg.latents) > dataset.num_neurons:
    raise UserError(f"latent size {max(cfg.latents)} exceeds the {dataset.num_neurons} neurons per "
                    "layer: drop it from --latents")
  likelihood = resolve_likelihood(cfg.likelihood, dataset)
  if likelihood == "poisson" and (dataset.x_LTN < 0).any():
    raise UserError("--likelihood=poisson needs non-negative counts, but the data has negative "
                    "values: use --likelihood=gaussian or --normalize=none on count data")
  heldout = heldout_mask(dataset.num_layers, dataset.num_neurons, cfg.heldout_neurons)
  t_train = train_time(dataset.num_time, cfg.train_fraction)
  check_window(dataset.num_time, t_train, cfg.window)
  return Prepared(dataset, likelihood, t_train, cfg.window, cfg.batch_size,
                  np.zeros_like(heldout) if shared else heldout, shared)
