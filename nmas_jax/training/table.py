"""The models axis: what each model of a sweep is (`ModelTable`) and their initial states.

Every leaf of a sweep's state has a leading models axis; its meaning lives
only in the table's columns. A new sweep axis is a new column here.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nmas_jax import models
from nmas_jax.config import Settings
from nmas_jax.training import population, train


@dataclasses.dataclass(frozen=True)
class ModelTable:
  """What each index of the models axis means: [models] int arrays; order layer, count, seed,
  decoder, member, latent (latent innermost)."""

  layer: np.ndarray  # index into the dataset's layers
  latent: np.ndarray  # latent size k (multiscale: the total over bands)
  seed: np.ndarray  # model seed (init and batch order)
  count: np.ndarray  # held-in neurons the encoder sees (--neuron_counts); 0: all of them
  bands: np.ndarray  # [models, bands] latents per band (--model=multiscale); else [models, 0]
  decoder: (
    np.ndarray
  )  # [models, 1] index into --decoder's list when it has several; else [models, 0]
  member: np.ndarray  # --population: the member of its (layer, ..., latent) group; else 0

  @classmethod
  def build(
    cls,
    num_layers: int,
    latents: Sequence[int],
    seeds: int,
    counts: Sequence[int] = (),
    bands: int = 0,
    decoders: int = 0,
    members: int = 1,
  ) -> ModelTable:
    """Layer, count, seed, decoder, member, then latent (innermost); with `bands`, every
    combination of per-band counts from `latents` but all zeros, in place of the latent; with
    `decoders` > 1, every latent once per decoder; `members` per model of a population."""
    combos = (
      [c for c in itertools.product(sorted(latents), repeat=bands) if any(c)]
      if bands
      else [(k,) for k in latents]
    )
    dec = [(d,) for d in range(decoders)] if decoders > 1 else [()]
    rows = [
      (l, sum(b), s, c, m, *(b if bands else ()), *d)
      for l in range(num_layers)
      for c in (0, *counts)
      for s in range(seeds)
      for d in dec
      for m in range(members)
      for b in combos
    ]
    width = 5 + bands + len(dec[0])
    grid = np.array(rows, dtype=np.int32).reshape(len(rows), width)
    return cls(
      grid[:, 0],
      grid[:, 1],
      grid[:, 2],
      grid[:, 3],
      grid[:, 5 : 5 + bands],
      grid[:, 5 + bands :],
      grid[:, 4],
    )

  @classmethod
  def for_sweep(cls, prep, cfg: Settings) -> ModelTable:
    """The models of a sweep of `cfg` on a `splits.Prepared` (no count axis for a shared model)."""
    return cls.build(
      prep.model_layers,
      cfg.latents,
      cfg.heldout_sets,
      () if prep.shared else cfg.neuron_counts,
      models.family(cfg.model).sweep_bands(cfg),
      len(cfg.decoders),
      cfg.population,
    )

  @property
  def model_latent(self) -> np.ndarray:
    """What each model's `latent_size` is: [models] k, [models, bands] for multiscale, or
    [models, 2] (k, decoder index) for a sweep of several decoders."""
    if self.bands.shape[1]:
      return self.bands
    if self.decoder.shape[1]:
      return np.concatenate([self.latent[:, None], self.decoder], axis=1)
    return self.latent

  def of_decoder(self, d: int) -> np.ndarray:
    """[models] bool: the models of decoder index d (every model when one decoder is swept)."""
    return self.decoder[:, 0] == d if self.decoder.shape[1] else np.ones(len(self), bool)

  def __len__(self) -> int:
    return len(self.layer)

  def take(self, index: np.ndarray) -> ModelTable:
    """The models at `index`."""
    return ModelTable(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

  def padded(self, size: int) -> ModelTable:
    """Extends the table to `size` models with inert copies of the last model."""
    extra = size - len(self)
    return (
      self.take(np.concatenate([np.arange(len(self)), np.full(extra, len(self) - 1)]))
      if extra
      else self
    )

  def describe(
    self, i: int, layer_names: Sequence[str] | None, decoders: Sequence[str] = ()
  ) -> str:
    """'layer 0, latent 10, seed 0' (layer 'all' for a shared model: layer_names None), with
    ', 50 neurons' for a model of the --neuron_counts axis and ', mlp decoder' for a sweep of
    several `decoders`."""
    layer = "all" if layer_names is None else layer_names[self.layer[i]]
    count = f", {self.count[i]} neurons" if self.count[i] else ""
    bands = f" (bands {','.join(map(str, self.bands[i]))})" if self.bands.shape[1] else ""
    dec = f", {decoders[self.decoder[i, 0]]} decoder" if self.decoder.shape[1] else ""
    member = f", member {self.member[i]}" if self.member.any() else ""
    return f"layer {layer}, latent {self.latent[i]}{bands}, seed {self.seed[i]}{count}{dec}{member}"


def init_states(
  cfg: Settings,
  table: ModelTable,
  neurons: int,
  tx: optax.GradientTransformation,
  out_sharding: Any = None,
  readout_bias_LN: np.ndarray | None = None,
) -> train.TrainState:
  """All models' states [models], by one vmapped init (placed with `out_sharding` when given).

  A model's init key depends on (seed, layer) only, so models that differ in
  latent size start from the same weights on their shared units. With
  `readout_bias_LN`, each model's readout bias (at the family's `readout_paths`) starts at its
  layer's row (the null model's prediction, so training starts from it).
  """
  model = models.make_model(cfg, neurons)
  keys = jax.vmap(lambda s, l: jax.random.fold_in(jax.random.PRNGKey(s), l))(
    jnp.asarray(table.seed), jnp.asarray(table.layer)
  )
  example = jnp.zeros((1, cfg.window, neurons), jnp.float32)
  init = functools.partial(train.init_state, model=model, tx=tx, example_x_BTN=example)

  def init_all(keys, latents, bias_MN, hp):
    state = jax.vmap(init)(keys, latents)
    if hp:  # a population's members: their own hyper-parameters
      state = population.with_hyperparams(state, hp)
    if bias_MN is None:
      return state
    set_bias = lambda readout: {**readout, "bias": bias_MN.astype(readout["bias"].dtype)}
    params = state.params
    for path in model.readout_paths():
      params = models.update_at(params, path, set_bias)
    return state.replace(params=params)

  bias = None if readout_bias_LN is None else jnp.asarray(readout_bias_LN[table.layer], jnp.float32)
  hp = population.initial(cfg, table) if cfg.population > 1 else {}
  args = (keys, jnp.asarray(table.model_latent), bias, hp)
  lowered = jax.jit(init_all, out_shardings=out_sharding).lower(*args)
  return lowered.compile(compiler_options=_init_compiler_options())(*args)


def _init_compiler_options() -> dict | None:
  """XLA:CPU options for the init program, which runs once: LLVM's O0 compiles it in about a
  fifth of the time (the flax init traces the whole forward pass) and changes weights by at
  most an ulp. Other platforms compile with their defaults."""
  if jax.devices()[0].platform == "cpu":
    return {"xla_backend_optimization_level": 0}
  return None
