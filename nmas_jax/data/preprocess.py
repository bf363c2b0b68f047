"""What `splits.prepare` does to raw data before splitting it: constant neurons dropped, layers
normalised with training-block statistics; recorded (`Preprocessing`) so that new data of the
same neurons gets the same."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nmas_jax.data import dataset as data_lib
from nmas_jax.data.dataset import Dataset
from nmas_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """What `prepare` did to raw data, to do again to new data of the same neurons
  (`prepare(reuse=)`).

  neuron_index_LN: int [layers, neurons], the raw neurons kept (constant ones dropped).
  normalization: per layer, the method and its training-block statistics.
  heldout_SLN: each seed's held-out neurons; likelihood: the resolved one.
  """

  neuron_index_LN: np.ndarray
  normalization: dict[str, dict[str, Any]]
  heldout_SLN: np.ndarray
  likelihood: str

  def to_json(self) -> dict[str, Any]:
    tolist = lambda v: v.tolist() if isinstance(v, np.ndarray) else v
    return {
      "neuron_index": self.neuron_index_LN.tolist(),
      "heldout": self.heldout_SLN.tolist(),
      "likelihood": self.likelihood,
      "normalization": {
        n: {k: tolist(v) for k, v in d.items()} for n, d in self.normalization.items()
      },
    }

  def apply(self, dataset: Dataset) -> Dataset:
    """`dataset` (raw, the fitted layers and neurons) with the fitted neurons and normalisation."""
    dataset = _select(dataset, self.neuron_index_LN)
    method = next(iter(self.normalization.values()))["method"] if self.normalization else "none"
    return _normalize(dataset, method, None, self.heldout_SLN, self.normalization)[0]

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> Preprocessing:
    return cls(
      np.asarray(d["neuron_index"], np.int64),
      d["normalization"],
      np.asarray(d["heldout"], bool),
      d["likelihood"],
    )


def _drop_constant(
  dataset: Dataset, t_train: int, notes: list[str]
) -> tuple[np.ndarray, dict[str, list[int]]]:
  """Neurons to keep [layers, neurons]: constant ones on the training block dropped, then layers
  subsampled (seeded) to the smallest count left, so that they share one count."""
  x = dataset.x_LTN
  constant_LN = x[:, :t_train].std(axis=1) == 0
  if not constant_LN.any():
    return np.tile(np.arange(dataset.num_neurons), (dataset.num_layers, 1)), {}
  dropped = {}
  for l, name in enumerate(dataset.layer_names):
    if constant_LN[l].all():
      raise UserError(
        f"layer {name} has no variance on the training block (every neuron is "
        "constant there): drop it with --layers or check the data"
      )
    if constant_LN[l].any():
      dropped[name] = np.flatnonzero(constant_LN[l]).tolist()
      shown = ", ".join(map(str, dropped[name][:10])) + (" ..." if len(dropped[name]) > 10 else "")
      notes.append(
        f"layer {name}: dropped {len(dropped[name])} neuron(s) constant on the "
        f"training block (indices {shown})"
      )
  n = int((~constant_LN).sum(axis=1).min())
  rng = np.random.default_rng(0)
  keep = [
    np.sort(rng.choice(np.flatnonzero(~c), n, replace=False))
    if (~c).sum() > n
    else np.flatnonzero(~c)
    for c in constant_LN
  ]
  if any((~c).sum() > n for c in constant_LN):
    notes.append(f"layers subsampled to {n} neurons each (seeded) so that they share one count")
  return np.stack(keep), dropped


def _select(dataset: Dataset, index_LN: np.ndarray) -> Dataset:
  """Each layer's neurons `index_LN[layer]`, in order (and their true rates)."""
  if index_LN.shape[1] == dataset.num_neurons and (index_LN == np.arange(index_LN.shape[1])).all():
    return dataset
  pick = lambda a_LTN: np.stack([x[:, i] for x, i in zip(a_LTN, index_LN)])
  return dataclasses.replace(
    dataset,
    x_LTN=pick(dataset.x_LTN),
    rates_LTN=None if dataset.rates_LTN is None else pick(dataset.rates_LTN),
  )


def _normalize(
  dataset: Dataset,
  method: str,
  t_train: int | None,
  heldout_SLN: np.ndarray,
  reuse: dict[str, dict[str, Any]] | None = None,
) -> tuple[Dataset, dict[str, Any]]:
  """Each layer normalised with training-block statistics (`data.normalize`), or `reuse`d ones."""
  population = dataset.population_mean_T
  if method == "mean_per_bin_all" and population is None:
    population = dataset.x_LTN.mean(axis=(0, 2))
  held_in_by_all_LN = ~heldout_SLN.any(axis=0)
  layers, rates, applied = [], [], {}
  for l, name in enumerate(dataset.layer_names):
    x, info = data_lib.normalize(
      dataset.x_LTN[l].astype(np.float64),
      method,
      t_train=t_train,
      divisor_N=held_in_by_all_LN[l],
      population_mean_T=population,
      stats=None if reuse is None else reuse[name],
    )
    layers.append(x)
    applied[name] = info
    if dataset.rates_LTN is not None and method in ("none", "zscore"):
      # The true rates in the data's units: the same affine map per neuron.
      rates.append(
        data_lib.normalize(
          dataset.rates_LTN[l].astype(np.float64),
          method,
          stats=info if method == "zscore" else None,
        )[0]
      )
  return dataclasses.replace(
    dataset,
    x_LTN=np.stack(layers).astype(np.float32),
    rates_LTN=np.stack(rates).astype(np.float32) if rates else None,
  ), applied
