"""Neural population data: the `Dataset` every loader returns, checks and preprocessing.

A `Dataset`'s activity is one array `x_LTN` [layers, time, neurons]: all
layers share one neuron count so that models of every layer can be stacked on
one vmapped models axis. Loaders are in `loaders`, generators in `synthetic`,
splits and batches in `splits`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from nmas_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Activity of several layers with a shared neuron count.

  Attributes:
    x_LTN: float32 [layers, time, neurons].
    layer_names: one name per layer (Stringer: the plane's z value).
    name: the dataset kind ("synthetic", "stringer", "array", ...).
    true_latent: {layer name: true dimension} for synthetic data, else None.
    meta: provenance and preprocessing (JSON-serialisable).
    counts: the raw activity was spike counts (non-negative integers), so
      `--likelihood=auto` models it as Poisson.
    population_mean_T: [time] mean over every neuron of the recording, for
      --normalize=mean_per_bin_all (None: the mean over all layers' neurons).
    trial_length: bins per trial when the time axis is trials laid end to end (`--trials`,
      `lorenz_trials`): splits go by trial and a window is a whole trial; 0 for one
      continuous recording.
    rates_LTN: the true rates (or noiseless means) [layers, time, neurons] of generated data,
      for `rates_r2`; None for recordings.
  """

  x_LTN: np.ndarray
  layer_names: tuple[str, ...]
  name: str
  true_latent: dict[str, int] | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  counts: bool = False
  population_mean_T: np.ndarray | None = None
  trial_length: int = 0
  rates_LTN: np.ndarray | None = None

  @property
  def num_trials(self) -> int:
    """Trials (1 for a continuous recording)."""
    return self.num_time // self.trial_length if self.trial_length else 1

  @property
  def num_layers(self) -> int:
    return self.x_LTN.shape[0]

  @property
  def num_time(self) -> int:
    return self.x_LTN.shape[1]

  @property
  def num_neurons(self) -> int:
    return self.x_LTN.shape[2]

  def select_layers(self, names: Sequence[str]) -> Dataset:
    """Keeps only the named layers, in the order given."""
    if not names:
      return self
    index = []
    for name in names:
      if name not in self.layer_names:
        raise UserError(
          f"unknown layer {name!r} in --layers: this dataset has layers "
          f"{', '.join(self.layer_names)}"
        )
      if self.layer_names.index(name) in index:
        raise UserError(f"layer {name!r} is listed twice in --layers")
      index.append(self.layer_names.index(name))
    true_latent = None
    if self.true_latent is not None:
      true_latent = {n: self.true_latent[n] for n in names}
    return dataclasses.replace(
      self,
      x_LTN=self.x_LTN[index],
      layer_names=tuple(names),
      true_latent=true_latent,
      rates_LTN=None if self.rates_LTN is None else self.rates_LTN[index],
    )


# ----------------------------------------------------------------------------
# Checks shared by the loaders.


def check_finite(x: np.ndarray, what: str) -> None:
  bad = ~np.isfinite(x)
  if bad.any():
    where = np.argwhere(bad)[0]
    raise UserError(
      f"{what} has {int(bad.sum())} non-finite values (NaN or Inf); the "
      f"first is at index {tuple(int(i) for i in where)}: clean them, "
      "or pass --nan_policy=drop_neurons to drop those neurons"
    )


def check_numeric(x: np.ndarray, what: str) -> np.ndarray:
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise UserError(
      f"{what} has dtype {x.dtype}, not numeric: store activity as a float or integer array"
    )
  return np.asarray(x, dtype=np.float64)


def check_file(path: str) -> None:
  if not path:
    raise UserError("--data_path is empty: give the path of the data file")
  if os.path.isdir(path):
    raise UserError(f"data path is a directory, not a file: {path}")
  if not os.path.isfile(path):
    raise UserError(f"data file not found: {path}")
  if not os.access(path, os.R_OK):
    raise UserError(f"data file is not readable: {path}")


# ----------------------------------------------------------------------------
# Preprocessing. Binning happens when data are loaded; normalisation, which needs the
# training block and the held-out neurons, in `splits.prepare` (through `normalize`).


def is_counts(x: np.ndarray) -> bool:
  """Whether activity is spike counts: non-negative integers (decided on the raw array)."""
  x = np.asarray(x)
  return bool(x.size) and bool(np.all(x >= 0)) and bool(np.all(x == np.round(x)))


def bin_time(x_TN: np.ndarray, bin_size: int, how: str = "mean") -> np.ndarray:
  """Averages (or, for counts, sums: how="sum") `bin_size` adjacent time bins; a trailing
  remainder is dropped."""
  t = (x_TN.shape[0] // bin_size) * bin_size
  if t == 0:
    raise UserError(f"--bin={bin_size} is longer than the recording ({x_TN.shape[0]} bins)")
  x = x_TN[:t].reshape(t // bin_size, bin_size, *x_TN.shape[1:])
  return x.sum(axis=1) if how == "sum" else x.mean(axis=1)


def normalize(
  x_TN: np.ndarray,
  method: str,
  *,
  t_train: int | None = None,
  divisor_N: np.ndarray | None = None,
  population_mean_T: np.ndarray | None = None,
  stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
  """Normalises one layer's activity [time, neurons]; returns it and what was applied.

  zscore: each neuron standardised with the mean and std of the training
  block (its first `t_train` bins; all of it when None). mean_per_bin: each
  time bin divided by its mean over the neurons `divisor_N` marks (the
  layer's own neurons, default all; `splits.prepare` passes those no seed
  holds out, so no held-out activity reaches the encoder through the
  divisor). mean_per_bin_all: divided by `population_mean_T`, the mean over
  every neuron of the recording (the original NMAs' choice, which multiplies
  each layer by a signal of the others). `stats`: zscore statistics to reuse
  (those this function returned for the fitted data) instead of computing them.
  """
  if method == "none":
    return x_TN, {"method": "none"}
  if method == "zscore":
    if stats is not None:
      mean_N, std_N = np.asarray(stats["mean"]), np.asarray(stats["std"])
    else:
      ref = x_TN if t_train is None else x_TN[:t_train]
      mean_N, std_N = ref.mean(axis=0), ref.std(axis=0)
      std_N = np.where(std_N > 0, std_N, 1.0)
    return (x_TN - mean_N) / std_N, {"method": "zscore", "mean": mean_N, "std": std_N}
  if method == "mean_per_bin":
    mean_T = x_TN[:, divisor_N].mean(axis=1) if divisor_N is not None else x_TN.mean(axis=1)
    what = "its held-in neurons' mean"
  else:  # mean_per_bin_all
    mean_T = x_TN.mean(axis=1) if population_mean_T is None else population_mean_T
    what = "the mean of all neurons of the recording"
  bad = int((mean_T <= 0).sum())
  if bad:
    raise UserError(
      f"--normalize={method} divides each time bin by {what}, but {bad} bins have "
      "a mean <= 0 (dF/F or sparse counts?): use --normalize=zscore (the default)"
    )
  return x_TN / mean_T[:, None], {"method": method}


SHUFFLED_SUFFIX = "/shuffled"


def with_shuffle_control(dataset: Dataset, seed: int = 0) -> Dataset:
  """Appends a control copy of every layer: each neuron circularly shifted in time by its own
  offset.

  The shift keeps every neuron's own statistics (and autocorrelation) but
  destroys structure shared between neurons, so a latent model should gain
  nothing from more latent dimensions on the control layers.
  """
  rng = np.random.default_rng(seed + 104729)
  t = dataset.num_time
  control = np.empty_like(dataset.x_LTN)
  rates = None if dataset.rates_LTN is None else np.empty_like(dataset.rates_LTN)
  for l in range(dataset.num_layers):
    offsets = rng.integers(max(1, t // 10), t - max(1, t // 10) + 1, size=dataset.num_neurons)
    idx = (np.arange(t)[:, None] - offsets[None, :]) % t
    control[l] = np.take_along_axis(dataset.x_LTN[l], idx, axis=0)
    if rates is not None:
      rates[l] = np.take_along_axis(dataset.rates_LTN[l], idx, axis=0)
  names = dataset.layer_names + tuple(n + SHUFFLED_SUFFIX for n in dataset.layer_names)
  true = (
    None
    if dataset.true_latent is None
    else {**dataset.true_latent, **{n + SHUFFLED_SUFFIX: 0 for n in dataset.layer_names}}
  )
  return dataclasses.replace(
    dataset,
    x_LTN=np.concatenate([dataset.x_LTN, control]),
    layer_names=names,
    true_latent=true,
    rates_LTN=None if rates is None else np.concatenate([dataset.rates_LTN, rates]),
    meta={
      **dataset.meta,
      "shuffle_control": "each neuron circularly shifted by its own random offset",
      "shuffle_seed": seed,
    },
  )


def as_layers(x: Any, what: str) -> np.ndarray:
  """A numeric [time, neurons] or [layers, time, neurons] array as float64 [layers, time,
  neurons]."""
  arr = check_numeric(np.asarray(x), what)
  if arr.ndim == 2:
    arr = arr[None]
  if arr.ndim != 3:
    raise UserError(
      f"{what} must be [time, neurons] or [layers, time, neurons], got shape {arr.shape}"
    )
  return arr


def as_dataset(x: Any, name: str = "array") -> Dataset:
  """A Dataset from a Dataset or a numpy array [time, neurons] / [layers, time, neurons]."""
  if isinstance(x, Dataset):
    return x
  arr = as_layers(x, "X")
  check_finite(arr, "X")
  return Dataset(
    arr.astype(np.float32),
    tuple(str(i) for i in range(arr.shape[0])),
    name,
    None,
    {},
    counts=is_counts(arr),
  )


def bin_layer(x_TN: np.ndarray, bin_size: int, counts: bool) -> np.ndarray:
  """Adjacent bins summed for spike counts (they stay counts), else averaged."""
  return bin_time(x_TN, bin_size, "sum" if counts else "mean")


def binning_text(counts: bool) -> str:
  return "sum of adjacent bins (counts)" if counts else "mean of adjacent bins"
