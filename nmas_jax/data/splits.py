"""A dataset made ready for a sweep, once: time split, held-out neurons, windows, likelihood,
batches.

`prepare` does every data-dependent check and computes everything the loop,
the evaluation and the baselines read about the data (`Prepared`): the three
time blocks (train, validation, test), each seed's held-out neurons, the
likelihood, and the normalisation (training-block statistics);
`Prepared.place` puts what the jitted step reads onto the device mesh.
Training batches are random windows of the training block, a pure function
of (seed, step); validation and test use every non-overlapping window of
their block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from nmas_jax.config import Settings
from nmas_jax.data.batches import windows
from nmas_jax.data.dataset import Dataset
from nmas_jax.data.preprocess import Preprocessing, _drop_constant, _normalize, _select
from nmas_jax.errors import UserError
from nmas_jax.training import sharding


def heldout_masks(
  seeds: int, num_layers: int, num_neurons: int, fraction: float, folds: int = 0
) -> np.ndarray:
  """[held-out sets, layers, neurons] bool, True for neurons hidden from the encoder
  (co-smoothing).

  Each seed holds out its own random subset of round(fraction * neurons)
  neurons per layer (seed s draws from its own generator, so seed 0's subset
  does not depend on how many seeds there are). With `folds` K >= 2, seed s
  instead splits each layer's neurons at random into K disjoint folds of
  near-equal size, set s * K + f holding out fold f: every neuron is held out
  exactly once per seed.
  """
  if folds >= 2 and folds > num_neurons - 1:
    raise UserError(
      f"--neuron_folds={folds} needs more than {folds} neurons per layer; the layers "
      f"have {num_neurons}: use fewer folds"
    )
  n = int(round(fraction * num_neurons))
  if folds < 2 and fraction > 0 and (n < 1 or n >= num_neurons):
    raise UserError(
      f"--heldout_neurons={fraction} leaves {n} of {num_neurons} neurons held out: "
      "it must hold out at least one and keep at least one"
    )
  sets = max(folds, 1)
  mask = np.zeros((seeds * sets, num_layers, num_neurons), bool)
  for s in range(seeds):
    rng = np.random.default_rng(7919 + 1009 * s)
    for l in range(num_layers):
      if folds >= 2:
        order = rng.permutation(num_neurons)
        for f in range(folds):
          mask[s * folds + f, l, order[f::folds]] = True
      else:
        mask[s, l, rng.choice(num_neurons, n, replace=False)] = True
  return mask


def time_blocks(
  num_time: int, train_fraction: float, valid_fraction: float, trial_length: int = 0
) -> tuple[int, int]:
  """(t_train, t_valid): time [0, t_train) trains, [t_train, t_valid) validates, the rest tests.
  With `trial_length`, the blocks are whole trials (split by trial count)."""
  unit = trial_length or 1
  n = num_time // unit
  t_train = int(round(n * train_fraction)) * unit
  t_valid = int(round(n * (train_fraction + valid_fraction))) * unit
  if not 0 < t_train < t_valid < num_time:
    what = f"{n} trials are" if trial_length else f"{num_time} time bins are"
    raise UserError(
      f"{what} too few for a training, validation and test block "
      f"(--train_fraction={train_fraction}, --valid_fraction={valid_fraction})"
    )
  return t_train, t_valid


def fit_window(
  window: int, num_time: int, t_train: int, t_valid: int, default: int, notes: list[str]
) -> int:
  """`window`, or for a recording too short for the default one, the longest that fits every
  block."""
  lengths = (t_train, t_valid - t_train, num_time - t_valid)
  if window <= min(lengths):
    return window
  detail = (
    f"the data has {num_time} time bins after binning, {lengths[0]} train / {lengths[1]} "
    f"validation / {lengths[2]} test"
  )
  if window != default:
    raise UserError(
      f"--window={window} is longer than a block: {detail}; use --window<={min(lengths)}"
    )
  notes.append(f"--window={min(lengths)} instead of the default {window}: {detail}")
  return min(lengths)


def trial_window(window: int, trial_length: int, default: int, notes: list[str]) -> int:
  """Trial data: a window is a whole trial (a --window set to anything else is an error)."""
  if window not in (default, trial_length):
    raise UserError(
      f"--window={window}, but with trial data a window is a whole trial "
      f"({trial_length} bins): drop --window"
    )
  if window != trial_length:
    notes.append(f"--window={trial_length}: one whole trial (trial data)")
  return trial_length


def resolve_likelihood(likelihood: str, dataset: Dataset) -> str:
  """The observation model in use: `likelihood`, with auto = poisson for spike counts."""
  if likelihood != "auto":
    return likelihood
  return "poisson" if dataset.counts else "gaussian"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A dataset ready for a sweep. With `shared`, one model per (latent, seed) learns all layers.

  Attributes:
    dataset: the activity [layers, time, neurons], normalised, constant neurons dropped.
    likelihood: "gaussian" or "poisson" (auto resolved).
    t_train, t_valid: time [0, t_train) trains, [t_train, t_valid) validates, the rest tests.
    window, batch_size: training windows per step (window may be shortened, see notes).
    heldout_SLN: bool [seeds, layers, neurons], neurons each seed's encoder never sees.
    shared: windows of every layer train one model (no neuron held out).
    normalization: per layer, what was applied (statistics from the training block).
    dropped: per layer, indices (into the loaded data) of neurons dropped as constant.
    notes: one-line notes on what was changed to fit the data.
    neuron_index_LN: int [layers, neurons], the loaded neurons kept, in order.
    count_rank_SLN: int [seeds, layers, neurons], each held-in neuron's place in the order the
      --neuron_counts subsets take them (a count c keeps ranks < c, so subsets are nested);
      -1 for held-out neurons. None without --neuron_counts.
    t_select: the last t_select bins of the training block are the population's selection
      block (--population), which training windows leave out; 0 without a population.
  """

  dataset: Dataset
  likelihood: str
  t_train: int
  t_valid: int
  window: int
  batch_size: int
  heldout_SLN: np.ndarray
  shared: bool = False
  normalization: dict[str, Any] = dataclasses.field(default_factory=dict)
  dropped: dict[str, list[int]] = dataclasses.field(default_factory=dict)
  notes: tuple[str, ...] = ()
  neuron_index_LN: np.ndarray | None = None
  count_rank_SLN: np.ndarray | None = None
  t_select: int = 0

  @property
  def preprocessing(self) -> Preprocessing:
    """What was done to the raw data, to do again to new data (`prepare(reuse=...)`)."""
    return Preprocessing(
      self.neuron_index_LN, self.normalization, self.heldout_SLN, self.likelihood
    )

  @property
  def num_neurons(self) -> int:
    return self.dataset.num_neurons

  @property
  def stride(self) -> int:
    """Training windows start at multiples of this: the trial length for trial data, else 1."""
    return self.dataset.trial_length or 1

  def step_kwargs(self) -> dict[str, Any]:
    """What a sweep step needs to know of the data (the steppers' `vmap_step` and `bucket_step`):
    its likelihood and how training windows are sampled."""
    return dict(
      likelihood=self.likelihood,
      t_train=self.t_train - self.t_select,
      window=self.window,
      batch_size=self.batch_size,
      stride=self.stride,
      mix_layers=self.shared,
    )

  @property
  def model_layers(self) -> int:
    """Layers on the models axis: one when a shared model learns them all."""
    return 1 if self.shared else self.dataset.num_layers

  @property
  def cosmooth(self) -> bool:
    """Whether models are scored on held-out neurons."""
    return bool(self.heldout_SLN.any()) and not self.shared

  def input_mask_MN(
    self, layer_M: np.ndarray, seed_M: np.ndarray, count_M: np.ndarray | None = None
  ) -> np.ndarray:
    """float32 [models, neurons] encoder-input mask of each model: 1 for the neurons its encoder
    sees (held in, and within its --neuron_counts subset), 0 for the others."""
    if self.shared:
      return np.ones((len(layer_M), self.num_neurons), np.float32)
    inputs = ~self.heldout_SLN[seed_M, layer_M]
    if count_M is not None and np.any(count_M):
      rank = self.count_rank_SLN[seed_M, layer_M]
      inputs &= (count_M[:, None] == 0) | (rank < count_M[:, None])
    return inputs.astype(np.float32)

  def target_mask_MN(
    self, layer_M: np.ndarray, seed_M: np.ndarray, count_M: np.ndarray | None = None
  ) -> np.ndarray | None:
    """float32 [models, neurons]: the neurons each model's loss covers (its inputs and its
    held-out neurons; a neuron outside a model's count subset is not recorded for it). None
    when every model covers every neuron (no count axis)."""
    if count_M is None or not np.any(count_M):
      return None
    held = self.heldout_SLN[seed_M, layer_M]
    return np.maximum(self.input_mask_MN(layer_M, seed_M, count_M), held.astype(np.float32))

  def block(self, name: str) -> tuple[int, int]:
    """[start, stop) of the "train", "valid" or "test" block, or of "select" (the end of the
    training block, --population)."""
    return {
      "train": (0, self.t_train),
      "select": (self.t_train - self.t_select, self.t_train),
      "valid": (self.t_train, self.t_valid),
      "test": (self.t_valid, self.dataset.num_time),
    }[name]

  def windows_LVTN(self, name: str = "valid") -> np.ndarray:
    """A block's windows [model layers, windows, window, neurons] (a shared model's: all
    layers')."""
    v = windows(self.dataset.x_LTN, *self.block(name), self.window)
    return v.reshape(1, -1, *v.shape[2:]) if self.shared else v

  def flat(self, name: str = "valid", rates: bool = False) -> np.ndarray | None:
    """A block as its windows cover it: float64 [layers, windows * window, neurons] (with
    `rates`, the true rates in the data's units; None when the data has none)."""
    x_LTN = self.dataset.rates_LTN if rates else self.dataset.x_LTN
    if x_LTN is None:
      return None
    v = windows(x_LTN, *self.block(name), self.window)
    return v.reshape(v.shape[0], -1, v.shape[-1]).astype(np.float64)

  def null_link_LN(self) -> np.ndarray:
    """[model layers, neurons]: the zero-latent null (each neuron's training-block mean) in the
    readout's units (the log-rate for Poisson)."""
    mean_LN = self.dataset.x_LTN[:, : self.t_train].mean(axis=1)
    if self.shared:
      mean_LN = mean_LN.mean(axis=0, keepdims=True)
    return np.log(np.maximum(mean_LN, 1e-3)) if self.likelihood == "poisson" else mean_LN

  def train_block(self) -> np.ndarray:
    """The training block, float64 [layers, t_train, neurons]."""
    return self.dataset.x_LTN[:, : self.t_train].astype(np.float64)

  def place(
    self, mesh, layer_M: np.ndarray, seed_M: np.ndarray, count_M: np.ndarray | None = None
  ) -> Placed:
    """What the jitted step and evaluation read, on the mesh: data replicated, model columns
    sharded."""
    rep, by_model = sharding.replicated(mesh), sharding.models_sharding(mesh)
    target = self.target_mask_MN(layer_M, seed_M, count_M)
    return Placed(
      x_LTN=sharding.put(self.dataset.x_LTN, rep),
      valid_LVTN=sharding.put(self.windows_LVTN("valid"), rep),
      mask_MN=sharding.put(self.input_mask_MN(layer_M, seed_M, count_M), by_model),
      target_MN=None if target is None else sharding.put(target, by_model),
      layer_M=sharding.put(layer_M, by_model),
      seed_M=sharding.put(seed_M, by_model),
    )


@dataclasses.dataclass(frozen=True)
class Placed:
  """Device arrays of a prepared dataset: data [layers, ...] replicated, [models, ...] sharded."""

  x_LTN: jax.Array
  valid_LVTN: jax.Array
  mask_MN: jax.Array  # model m's encoder-input mask
  target_MN: jax.Array | None  # the neurons model m's loss covers; None: all
  layer_M: jax.Array  # which layer's data model m reads
  seed_M: jax.Array  # model m's seed (its batch order)


def prepare(
  dataset: Dataset,
  cfg: Settings,
  shared: bool = False,
  reuse: Preprocessing | None = None,
  data_seed: int = 0,
) -> Prepared:
  """Checks `cfg` against the data (one-line UserError) and prepares it for the sweep, once.

  With `reuse` (a fitted sweep's `Prepared.preprocessing`), new data of the
  same neurons is prepared exactly as the fitted data was: same neurons,
  normalisation statistics, held-out neurons and likelihood. `data_seed` draws the
  --neuron_counts subsets.
  """
  notes: list[str] = []
  likelihood = reuse.likelihood if reuse else resolve_likelihood(cfg.likelihood, dataset)
  if likelihood == "poisson" and (dataset.x_LTN < 0).any():
    raise UserError(
      "--likelihood=poisson needs non-negative counts, but the data has negative "
      "values: use --likelihood=gaussian"
    )
  t_train, t_valid = time_blocks(
    dataset.num_time, cfg.train_fraction, cfg.valid_fraction, dataset.trial_length
  )
  if dataset.trial_length:
    window = trial_window(cfg.window, dataset.trial_length, Settings().window, notes)
  else:
    window = fit_window(cfg.window, dataset.num_time, t_train, t_valid, Settings().window, notes)
  index, dropped = (reuse.neuron_index_LN, {}) if reuse else _drop_constant(dataset, t_train, notes)
  dataset = _select(dataset, index)
  if max(cfg.latents) > dataset.num_neurons:
    raise UserError(
      f"latent size {max(cfg.latents)} exceeds the {dataset.num_neurons} neurons per "
      "layer: drop it from --latents"
    )
  heldout = (
    reuse.heldout_SLN
    if reuse
    else heldout_masks(
      cfg.seeds, dataset.num_layers, dataset.num_neurons, cfg.heldout_neurons, cfg.neuron_folds
    )
  )
  if shared:
    heldout = np.zeros_like(heldout)
  method = "none" if likelihood == "poisson" else cfg.normalize
  dataset, applied = _normalize(
    dataset, method, t_train, heldout, reuse.normalization if reuse else None
  )
  ranks = (
    None if shared or not cfg.neuron_counts else count_ranks(heldout, cfg.neuron_counts, data_seed)
  )
  t_select = selection_bins(t_train, window, dataset.trial_length or 1, cfg.population)
  return Prepared(
    dataset,
    likelihood,
    t_train,
    t_valid,
    window,
    cfg.batch_size,
    heldout,
    shared,
    applied,
    dropped,
    tuple(notes),
    index,
    ranks,
    t_select,
  )


SELECT_FRACTION = 0.15  # of the training block: a population's selection block


def selection_bins(t_train: int, window: int, stride: int, population: int) -> int:
  """Bins at the end of the training block that a population's tournaments score its members
  on (--population > 1; else 0): SELECT_FRACTION of it, at least one window, whole trials;
  one-line error when too little training block would be left."""
  if population <= 1:
    return 0
  t = max(window, int(round(SELECT_FRACTION * t_train)))
  t = -(-t // stride) * stride
  if t_train - t < window:
    raise UserError(
      f"--population={population} scores members on the last {t} bins of the training block, "
      f"which leaves fewer than one {window}-bin window to train on: use --population=1 or "
      "a larger --train_fraction"
    )
  return t


def count_ranks(heldout_SLN: np.ndarray, counts: tuple[int, ...], data_seed: int) -> np.ndarray:
  """int [seeds, layers, neurons]: a random order of each (seed, layer)'s held-in neurons
  (-1 for held-out ones), so that the first c of it are the count-c subset; one-line error for a
  count that is not below the held-in neurons."""
  seeds, layers, n = heldout_SLN.shape
  held_in = int((~heldout_SLN).sum(-1).min())  # folds may differ by one neuron
  if max(counts) >= held_in:
    raise UserError(
      f"--neuron_counts={','.join(map(str, counts))} asks for {max(counts)} neurons, "
      f"but each layer has {held_in} held in: give counts below {held_in} (all "
      "held-in neurons are always swept)"
    )
  rank = np.full((seeds, layers, n), -1, np.int32)
  for s in range(seeds):
    for l in range(layers):
      rng = np.random.default_rng([data_seed, s, l])
      inn = np.flatnonzero(~heldout_SLN[s, l])
      rank[s, l, rng.permutation(inn)] = np.arange(len(inn))
  return rank
