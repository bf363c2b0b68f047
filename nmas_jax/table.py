"""The models axis: what each model of a sweep is (`ModelTable`) and their initial states.

Every leaf of a sweep's state has a leading models axis; its meaning lives
only in the table's columns. A new sweep axis is a new column here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import models, train
from nmas_jax.config import Settings


@dataclasses.dataclass(frozen=True)
class ModelTable:
  """What each index of the models axis means: [models] int arrays; order layer, seed, latent."""

  layer: np.ndarray   # index into the dataset's layers
  latent: np.ndarray  # latent size k
  seed: np.ndarray    # model seed (init and batch order)

  @classmethod
  def build(cls, num_layers: int, latents: Sequence[int], seeds: int) -> "ModelTable":
    grid = np.array([(l, k, s) for l in range(num_layers) for s in range(seeds) for k in latents],
                    dtype=np.int32).reshape(-1, 3)
    return cls(grid[:, 0], grid[:, 1], grid[:, 2])

  def __len__(self) -> int:
    return len(self.layer)

  def padded(self, size: int) -> "ModelTable":
    """Extends the table to `size` models with inert copies of the last model."""
    extra = size - len(self)
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], extra)])
    return ModelTable(pad(self.layer), pad(self.latent), pad(self.seed)) if extra else self

  def describe(self, i: int, layer_names: Sequence[str] | None) -> str:
    """'layer 0, latent 10, seed 0' (layer 'all' for a shared model: layer_names None)."""
    layer = "all" if layer_names is None else layer_names[self.layer[i]]
    return f"layer {layer}, latent {self.latent[i]}, seed {self.seed[i]}"


def init_states(cfg: Settings, table: ModelTable, neurons: int, out_sharding: Any = None,
                readout_bias_LN: np.ndarray | None = None) -> train.TrainState:
  """All models' states [models], by one vmapped init (placed with `out_sharding` when given).

  A model's init key depends on (seed, layer) only, so models that differ in
  latent size start from the same weights on their shared units. With
  `readout_bias_LN`, each model's readout bias starts at its layer's row (the
  null model's prediction, so training starts from it).
  """
  model = models.make_model(cfg, neurons)
  keys = jax.vmap(lambda s, l: jax.random.fold_in(jax.random.PRNGKey(s), l))(
      jnp.asarray(table.seed), jnp.asarray(table.layer))
  example = jnp.zeros((1, cfg.window, neurons), jnp.float32)
  init = functools.partial(train.init_state, model=model, clip_norm=cfg.clip_norm,
                           example_x_BTN=example)
  m = len(table)

  def init_all(keys, latents, bias_MN):
    state = jax.vmap(init)(keys, latents, jnp.full((m,), cfg.learning_rate, jnp.float32),
                           jnp.full((m,), cfg.weight_decay, jnp.float32))
    if bias_MN is None:
      return state
    dec = state.params["decoder_net"]
    readout = {**dec["readout"], "bias": bias_MN.astype(dec["readout"]["bias"].dtype)}
    params = {**state.params, "decoder_net": {**dec, "readout": readout}}
    return state.replace(params=params)

  bias = None if readout_bias_LN is None else jnp.asarray(readout_bias_LN[table.layer], jnp.float32)
  return jax.jit(init_all, out_shardings=out_sharding)(keys, jnp.asarray(table.latent), bias)
