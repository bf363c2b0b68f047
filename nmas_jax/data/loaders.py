"""Loaders of recorded data: Stringer spontaneous (.npy dict), plain arrays, NWB; and the
dispatcher."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from nmas_jax.config import DataSettings
from nmas_jax.data.dataset import (
  Dataset,
  as_layers,
  bin_layer,
  binning_text,
  check_file,
  check_finite,
  check_numeric,
  is_counts,
)
from nmas_jax.data.nwb import load_nwb
from nmas_jax.data.synthetic import FAMILIES
from nmas_jax.errors import UserError

STRINGER_KEYS = ("sresp", "xyz")
_D = DataSettings()  # the loaders' defaults are the command line's


def _layer_name(z: float) -> str:
  return str(int(z)) if float(z).is_integer() else repr(float(z))


def _read_stringer(path: str, drop_nonfinite: bool, warn) -> tuple[np.ndarray, np.ndarray]:
  """(sresp [neurons, time], xyz [3, neurons]) of a Stringer file, checked (UserError)."""
  check_file(path)
  try:
    raw = np.load(path, allow_pickle=True)
  except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error.
    raise UserError(
      f"cannot read {path} as a .npy file: {type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}"
    ) from e
  if isinstance(raw, np.ndarray) and raw.dtype == object and raw.shape == ():
    raw = raw.item()
  if not isinstance(raw, dict):
    raise UserError(
      f"{path} does not hold a dict (got {type(raw).__name__}): a Stringer "
      "file is np.save of a dict with keys 'sresp' and 'xyz'; for a plain "
      "array use --dataset=array"
    )
  missing = [k for k in STRINGER_KEYS if k not in raw]
  if missing:
    raise UserError(
      f"{path} is missing key(s) {', '.join(map(repr, missing))}: a Stringer "
      "file needs 'sresp' [neurons, time] and 'xyz' [3, neurons]"
    )
  sresp = check_numeric(np.asarray(raw["sresp"]), "sresp")
  xyz = check_numeric(np.asarray(raw["xyz"]), "xyz")
  if sresp.ndim != 2:
    raise UserError(f"sresp must be 2-D [neurons, time], got shape {sresp.shape}")
  if xyz.ndim != 2 or xyz.shape[0] != 3:
    raise UserError(f"xyz must be [3, neurons], got shape {xyz.shape}")
  if xyz.shape[1] != sresp.shape[0]:
    raise UserError(
      f"sresp has {sresp.shape[0]} neurons but xyz has {xyz.shape[1]}: "
      "they must describe the same neurons"
    )
  check_finite(xyz, "xyz")
  if drop_nonfinite:
    keep = np.isfinite(sresp).all(axis=1)
    if not keep.all():
      warn(
        f"dropped {int((~keep).sum())} of {len(keep)} neurons with NaN/Inf in sresp "
        "(--nan_policy=drop_neurons)"
      )
      sresp, xyz = sresp[keep], xyz[:, keep]
  check_finite(sresp, "sresp [neurons, time]")
  return sresp, xyz


def load_stringer(
  path: str,
  *,
  neurons_per_layer: int | None = None,
  bin_size: int = _D.bin,
  seed: int = _D.data_seed,
  drop_nonfinite: bool = False,
  warn=print,
) -> Dataset:
  """Loads Stringer et al. 2019 spontaneous data; layers are the unique z planes.

  The file is a pickled dict (np.save of a dict): loading it runs code from the
  file, so only load files you trust. Normalisation happens later
  (`splits.prepare`); the mean over every neuron of the recording is kept
  for --normalize=mean_per_bin_all.
  """
  sresp, xyz = _read_stringer(path, drop_nonfinite, warn)

  x_TN = sresp.T
  counts_data = is_counts(x_TN)
  population_mean_T = bin_layer(x_TN.mean(axis=1, keepdims=True), bin_size, False)[:, 0]
  z_N = xyz[2]
  planes = np.unique(z_N)
  counts = [int((z_N == z).sum()) for z in planes]
  n = min(counts) if neurons_per_layer is None else neurons_per_layer
  if n < 1:
    raise UserError(f"--neurons_per_layer must be positive, got {n}")
  rng = np.random.default_rng(seed)
  layers, chosen = [], {}
  for z, count in zip(planes, counts):
    if count < n:
      raise UserError(
        f"plane z={_layer_name(z)} has only {count} neurons, fewer than "
        f"--neurons_per_layer={n}: lower it or leave it unset"
      )
    idx = np.sort(rng.choice(np.flatnonzero(z_N == z), size=n, replace=False))
    chosen[_layer_name(z)] = idx.tolist()
    layers.append(bin_layer(x_TN[:, idx], bin_size, counts_data))
  meta = dict(
    path=os.path.abspath(path),
    neurons_per_plane=dict(zip(map(_layer_name, planes), counts)),
    neurons_per_layer=n,
    bin=bin_size,
    binning=binning_text(counts_data),
    subsample_seed=seed,
    neuron_indices=chosen,
  )
  return Dataset(
    np.stack(layers).astype(np.float32),
    tuple(map(_layer_name, planes)),
    "stringer",
    None,
    meta,
    counts=counts_data,
    population_mean_T=population_mean_T,
  )


def _read_array(path: str, key: str | None) -> tuple[np.ndarray, str | None]:
  """The array in a .npy, or the one `key` names (or the only [time, neurons]-like one) in a
  .npz."""
  with open(path, "rb") as f:
    magic = f.read(6)
  if magic != b"\x93NUMPY" and magic[:4] != b"PK\x03\x04":
    raise UserError(
      f"{path} is not a valid .npy or .npz file: save the activity with numpy.save or numpy.savez"
    )
  try:
    raw = np.load(path, allow_pickle=False)
  except ValueError as e:
    if magic == b"\x93NUMPY":
      raise UserError(
        f"{path} holds pickled objects, which --dataset=array refuses to load "
        "(it would run code from the file): save a plain numeric array"
      ) from e
    raise UserError(f"{path} is not a valid .npz file ({e}): save it again with numpy.savez") from e
  except Exception as e:  # noqa: BLE001 - a truncated or corrupt file
    kind = ".npy" if magic == b"\x93NUMPY" else ".npz"
    raise UserError(f"{path} is not a valid {kind} file ({type(e).__name__}): save it again") from e
  if not isinstance(raw, np.lib.npyio.NpzFile):
    return raw, None
  with raw:
    keys = list(raw.keys())
    if key:
      if key not in keys:
        raise UserError(f"--data_key={key!r} is not in {path}; it holds {', '.join(keys)}")
      return raw[key], key
    try:
      arrays = {k: raw[k] for k in keys}
    except Exception as e:  # noqa: BLE001
      raise UserError(f"{path} is not a valid .npz file ({type(e).__name__}): save it again") from e
  shaped = [k for k, v in arrays.items() if v.ndim in (2, 3)]
  if len(keys) == 1 or len(shaped) == 1:
    key = keys[0] if len(keys) == 1 else shaped[0]
    return arrays[key], key
  raise UserError(f"{path} holds several arrays ({', '.join(keys)}): choose one with --data_key")


def load_array(
  path: str,
  *,
  key: str | None = None,
  bin_size: int = _D.bin,
  trials: bool = False,
  drop_nonfinite: bool = False,
  warn=print,
) -> Dataset:
  """Loads a .npy/.npz array [time, neurons] (one layer) or [layers, time, neurons]; with
  `trials`, [trials, time, neurons] or [layers, trials, time, neurons], each trial binned on its
  own and the trials laid end to end (`Dataset.trial_length`)."""
  check_file(path)
  x, key = _read_array(path, key)
  if trials:
    return _trial_array(x, path, key, bin_size, drop_nonfinite, warn)
  x = as_layers(x, "the array")
  if drop_nonfinite:
    x = _drop_nonfinite_neurons(x, warn)
  check_finite(x, "the array [layers, time, neurons]")
  counts_data = is_counts(x)
  layers = [bin_layer(x_TN, bin_size, counts_data) for x_TN in x]
  meta = dict(path=os.path.abspath(path), key=key, bin=bin_size, binning=binning_text(counts_data))
  return Dataset(
    np.stack(layers).astype(np.float32),
    tuple(str(i) for i in range(len(layers))),
    "array",
    None,
    meta,
    counts=counts_data,
  )


def _drop_nonfinite_neurons(x: np.ndarray, warn) -> np.ndarray:
  """x [..., neurons] without the neurons that have a NaN/Inf anywhere (warned; one-line error
  when none is left)."""
  keep = np.isfinite(x).all(axis=tuple(range(x.ndim - 1)))
  if not keep.all():
    warn(
      f"dropped {int((~keep).sum())} of {len(keep)} neurons with NaN/Inf "
      "(from every layer, to keep equal counts; --nan_policy=drop_neurons)"
    )
    x = x[..., keep]
  if x.shape[-1] == 0:
    raise UserError("every neuron has NaN/Inf values: nothing left to fit")
  return x


def _trial_array(
  x: np.ndarray, path: str, key: str | None, bin_size: int, drop_nonfinite: bool, warn
) -> Dataset:
  """`load_array` of trial data: [trials, time, neurons] or [layers, trials, time, neurons]."""
  x = check_numeric(np.asarray(x), "the array")
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4:
    raise UserError(
      f"with --trials the array must be [trials, time, neurons] or [layers, trials, "
      f"time, neurons], got shape {x.shape}"
    )
  if drop_nonfinite:
    x = _drop_nonfinite_neurons(x, warn)
  check_finite(x, "the array [layers, trials, time, neurons]")
  counts_data = is_counts(x)
  if bin_size > x.shape[2]:
    raise UserError(f"--bin={bin_size} is longer than a trial ({x.shape[2]} bins)")
  binned = np.stack(
    [np.stack([bin_layer(t_TN, bin_size, counts_data) for t_TN in layer]) for layer in x]
  )  # [layers, trials, binned time, neurons]
  layers, n_trials, length, n = binned.shape
  meta = dict(
    path=os.path.abspath(path),
    key=key,
    bin=bin_size,
    binning=binning_text(counts_data),
    trials=n_trials,
    trial_length=length,
  )
  return Dataset(
    binned.reshape(layers, n_trials * length, n).astype(np.float32),
    tuple(str(i) for i in range(layers)),
    "array",
    None,
    meta,
    counts=counts_data,
    trial_length=length,
  )


def load(ds: DataSettings, *, drop_nonfinite: bool = False, warn=print) -> Dataset:
  """Loads the dataset `ds` names, keeping `ds.layers` (all when empty).

  `ds.bin` applies to recorded data (the built-in data are generated at
  their final resolution); normalisation happens in `splits.prepare`. With `drop_nonfinite`,
  neurons with NaN/Inf are dropped (and
  `warn` told how many) instead of refusing the data.
  """
  recorded = dict(bin_size=ds.bin)
  if ds.trials and ds.dataset != "array":
    raise UserError(
      f"--trials describes an array file's layout and needs --dataset=array, not "
      f"--dataset={ds.dataset} (lorenz_trials is trial data already)"
    )
  if ds.dataset in FAMILIES:
    out = FAMILIES[ds.dataset](seed=ds.data_seed)
  elif ds.dataset == "stringer":
    out = load_stringer(
      ds.data_path,
      neurons_per_layer=ds.neurons_per_layer,
      seed=ds.data_seed,
      drop_nonfinite=drop_nonfinite,
      warn=warn,
      **recorded,
    )
  elif ds.dataset == "array":
    out = load_array(
      ds.data_path,
      key=ds.data_key,
      trials=ds.trials,
      drop_nonfinite=drop_nonfinite,
      warn=warn,
      **recorded,
    )
    if ds.neurons_per_layer is not None:
      if ds.neurons_per_layer > out.num_neurons:
        raise UserError(
          f"--neurons_per_layer={ds.neurons_per_layer} must be in "
          f"1..{out.num_neurons} (the array's neuron count)"
        )
      rng = np.random.default_rng(ds.data_seed)
      idx = np.sort(rng.choice(out.num_neurons, ds.neurons_per_layer, replace=False))
      out = dataclasses.replace(out, x_LTN=out.x_LTN[:, :, idx])
  else:  # "nwb": the choices are checked by DataSettings
    out = load_nwb(
      ds.data_path, series=ds.nwb_series, bin_ms=ds.bin_ms, seed=ds.data_seed, **recorded
    )
  return out.select_layers(ds.layers)
