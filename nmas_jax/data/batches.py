"""Training batches: random windows of the training block, a pure function of (seed, step); and
the non-overlapping windows of a block for evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def window_starts(
  seed: jax.Array, step: jax.Array, *, t_train: int, window: int, batch_size: int, stride: int = 1
) -> jax.Array:
  """Random window starts [batch] in the training block, multiples of `stride` (the trial length
  for trial data: a window is then a whole trial): a pure function of (seed, step)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return stride * jax.random.randint(key, (batch_size,), 0, (t_train - window) // stride + 1)


def window_layers(
  seed: jax.Array, step: jax.Array, *, num_layers: int, batch_size: int
) -> jax.Array:
  """Random layer per window [batch] for models trained on all layers: a pure function of (seed,
  step)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step), 1)
  return jax.random.randint(key, (batch_size,), 0, num_layers)


def sample_batches(
  x_LTN: jax.Array,
  layer_M: jax.Array,
  seed_M: jax.Array,
  step: jax.Array,
  *,
  t_train: int,
  window: int,
  batch_size: int,
  mix_layers: bool = False,
  stride: int = 1,
) -> jax.Array:
  """Training windows for every model: [models, batch, window, neurons].

  Model m reads layer layer_M[m]; with `mix_layers` each window comes from a
  random layer instead (a shared model of all layers). Gathers exactly the
  windows needed (never a per-model copy of a layer). Windows start at multiples of `stride`.
  """
  starts_MB = jax.vmap(
    lambda s: window_starts(
      s, step, t_train=t_train, window=window, batch_size=batch_size, stride=stride
    )
  )(seed_M)
  t_MBW = starts_MB[:, :, None] + jnp.arange(window)[None, None, :]
  if mix_layers:
    layer_MB = jax.vmap(
      lambda s: window_layers(s, step, num_layers=x_LTN.shape[0], batch_size=batch_size)
    )(seed_M)
    return x_LTN[layer_MB[:, :, None], t_MBW]
  return x_LTN[layer_M[:, None, None], t_MBW]


def windows(x_LTN: np.ndarray, start: int, stop: int, window: int) -> np.ndarray:
  """All non-overlapping windows of time [start, stop): [layers, windows, window, neurons]."""
  n = (stop - start) // window
  v = x_LTN[:, start : start + n * window]
  return v.reshape(v.shape[0], n, window, v.shape[2])
