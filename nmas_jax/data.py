"""Neural population data: loaders, built-in synthetic data, splits and batches.

Every loader returns a `Dataset` whose activity is one array `x_LTN`
[layers, time, neurons]: all layers share one neuron count so that models of
every layer can be stacked on one vmapped models axis.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZATIONS = ("mean_per_bin", "zscore", "none")
STRINGER_KEYS = ("sresp", "xyz")


class UserError(ValueError):
  """Bad input from the user: the message is one line saying what and how to fix."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Activity of several layers with a shared neuron count.

  Attributes:
    x_LTN: float32 [layers, time, neurons].
    layer_names: one name per layer (Stringer: the plane's z value).
    name: the dataset kind ("synthetic", "stringer", "array", ...).
    true_latent: {layer name: true dimension} for synthetic data, else None.
    meta: provenance and preprocessing (JSON-serialisable).
  """

  x_LTN: np.ndarray
  layer_names: tuple[str, ...]
  name: str
  true_latent: dict[str, int] | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_layers(self) -> int:
    return self.x_LTN.shape[0]

  @property
  def num_time(self) -> int:
    return self.x_LTN.shape[1]

  @property
  def num_neurons(self) -> int:
    return self.x_LTN.shape[2]

  def select_layers(self, names: Sequence[str]) -> "Dataset":
    """Keeps only the named layers, in the order given."""
    if not names:
      return self
    index = []
    for name in names:
      if name not in self.layer_names:
        raise UserError(
            f"unknown layer {name!r} in --layers: this dataset has layers "
            f"{', '.join(self.layer_names)}")
      if self.layer_names.index(name) in index:
        raise UserError(f"layer {name!r} is listed twice in --layers")
      index.append(self.layer_names.index(name))
    true_latent = None
    if self.true_latent is not None:
      true_latent = {n: self.true_latent[n] for n in names}
    return dataclasses.replace(
        self, x_LTN=self.x_LTN[index], layer_names=tuple(names),
        true_latent=true_latent)


# ----------------------------------------------------------------------------
# Checks shared by the loaders.


def _check_finite(x: np.ndarray, what: str) -> None:
  bad = ~np.isfinite(x)
  if bad.any():
    where = np.argwhere(bad)[0]
    raise UserError(
        f"{what} has {int(bad.sum())} non-finite values (NaN or Inf); the "
        f"first is at index {tuple(int(i) for i in where)}: clean them, "
        "or pass --nan_policy=drop_neurons to drop those neurons")


def _check_numeric(x: np.ndarray, what: str) -> np.ndarray:
  if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
    raise UserError(f"{what} has dtype {x.dtype}, not numeric: store activity "
                    "as a float or integer array")
  return np.asarray(x, dtype=np.float64)


def _check_file(path: str) -> None:
  if not path:
    raise UserError("--data_path is empty: give the path of the data file")
  if os.path.isdir(path):
    raise UserError(f"data path is a directory, not a file: {path}")
  if not os.path.isfile(path):
    raise UserError(f"data file not found: {path}")
  if not os.access(path, os.R_OK):
    raise UserError(f"data file is not readable: {path}")


# ----------------------------------------------------------------------------
# Preprocessing, as the original NMAs did it.


def normalize(x_TN: np.ndarray, method: str, population_mean_T: np.ndarray | None = None) -> np.ndarray:
  """Normalises activity [time, neurons].

  mean_per_bin divides each time bin by its mean over the population (all
  neurons of the recording when `population_mean_T` is given, as the original
  did before splitting layers); zscore standardises each neuron over time.
  """
  if method == "none":
    return x_TN
  if method == "mean_per_bin":
    mean_T = x_TN.mean(axis=1) if population_mean_T is None else population_mean_T
    bad = int((mean_T <= 0).sum())
    if bad:
      raise UserError(
          f"--normalize=mean_per_bin needs a positive population mean in every "
          f"time bin, but {bad} bins have mean <= 0: use --normalize=zscore or none")
    return x_TN / mean_T[:, None]
  if method == "zscore":
    std_N = x_TN.std(axis=0)
    return (x_TN - x_TN.mean(axis=0)) / np.where(std_N > 0, std_N, 1.0)
  raise UserError(f"unknown --normalize={method!r}: choose one of {', '.join(NORMALIZATIONS)}")


def bin_time(x_TN: np.ndarray, bin_size: int) -> np.ndarray:
  """Averages `bin_size` adjacent time bins; a trailing remainder is dropped."""
  if bin_size < 1:
    raise UserError(f"--bin must be a positive integer, got {bin_size}")
  t = (x_TN.shape[0] // bin_size) * bin_size
  if t == 0:
    raise UserError(f"--bin={bin_size} is longer than the recording ({x_TN.shape[0]} bins)")
  return x_TN[:t].reshape(t // bin_size, bin_size, *x_TN.shape[1:]).mean(axis=1)


# ----------------------------------------------------------------------------
# Loaders.


def _layer_name(z: float) -> str:
  return str(int(z)) if float(z).is_integer() else repr(float(z))


def load_stringer(path: str, *, neurons_per_layer: int | None = None,
                  normalize_method: str = "mean_per_bin", bin_size: int = 2,
                  seed: int = 0, drop_nonfinite: bool = False, warn=print) -> Dataset:
  """Loads Stringer et al. 2019 spontaneous data; layers are the unique z planes.

  The file is a pickled dict (np.save of a dict): loading it runs code from the
  file, so only load files you trust.
  """
  _check_file(path)
  try:
    raw = np.load(path, allow_pickle=True)
  except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error.
    raise UserError(f"cannot read {path} as a .npy file: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
  if isinstance(raw, np.ndarray) and raw.dtype == object and raw.shape == ():
    raw = raw.item()
  if not isinstance(raw, dict):
    raise UserError(f"{path} does not hold a dict (got {type(raw).__name__}): a Stringer "
                    "file is np.save of a dict with keys 'sresp' and 'xyz'; for a plain "
                    "array use --dataset=array")
  missing = [k for k in STRINGER_KEYS if k not in raw]
  if missing:
    raise UserError(f"{path} is missing key(s) {', '.join(map(repr, missing))}: a Stringer "
                    "file needs 'sresp' [neurons, time] and 'xyz' [3, neurons]")
  sresp = _check_numeric(np.asarray(raw["sresp"]), "sresp")
  xyz = _check_numeric(np.asarray(raw["xyz"]), "xyz")
  if sresp.ndim != 2:
    raise UserError(f"sresp must be 2-D [neurons, time], got shape {sresp.shape}")
  if xyz.ndim != 2 or xyz.shape[0] != 3:
    raise UserError(f"xyz must be [3, neurons], got shape {xyz.shape}")
  if xyz.shape[1] != sresp.shape[0]:
    raise UserError(f"sresp has {sresp.shape[0]} neurons but xyz has {xyz.shape[1]}: "
                    "they must describe the same neurons")
  _check_finite(xyz, "xyz")
  if drop_nonfinite:
    keep = np.isfinite(sresp).all(axis=1)
    if not keep.all():
      warn(f"dropped {int((~keep).sum())} of {len(keep)} neurons with NaN/Inf in sresp "
           "(--nan_policy=drop_neurons)")
      sresp, xyz = sresp[keep], xyz[:, keep]
  _check_finite(sresp, "sresp [neurons, time]")

  x_TN = sresp.T
  population_mean_T = x_TN.mean(axis=1)
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
      raise UserError(f"plane z={_layer_name(z)} has only {count} neurons, fewer than "
                      f"--neurons_per_layer={n}: lower it or leave it unset")
    idx = np.sort(rng.choice(np.flatnonzero(z_N == z), size=n, replace=False))
    chosen[_layer_name(z)] = idx.tolist()
    x = normalize(x_TN[:, idx], normalize_method, population_mean_T)
    layers.append(bin_time(x, bin_size))
  meta = dict(path=os.path.abspath(path), neurons_per_plane=dict(zip(map(_layer_name, planes), counts)),
              neurons_per_layer=n, normalize=normalize_method, bin=bin_size,
              binning="mean of adjacent bins", subsample_seed=seed, neuron_indices=chosen)
  return Dataset(np.stack(layers).astype(np.float32), tuple(map(_layer_name, planes)),
                 "stringer", None, meta)


def load_array(path: str, *, key: str | None = None, normalize_method: str = "mean_per_bin",
               bin_size: int = 2, drop_nonfinite: bool = False, warn=print) -> Dataset:
  """Loads a .npy/.npz array [time, neurons] (one layer) or [layers, time, neurons]."""
  _check_file(path)
  try:
    raw = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise UserError(f"{path} holds pickled objects, which --dataset=array refuses to load "
                    "(it would run code from the file): save a plain numeric array") from e
  except Exception as e:  # noqa: BLE001
    raise UserError(f"cannot read {path} as .npy/.npz: {type(e).__name__}") from e
  if isinstance(raw, np.lib.npyio.NpzFile):
    with raw:
      keys = list(raw.keys())
      if key:
        if key not in keys:
          raise UserError(f"--data_key={key!r} is not in {path}; it holds {', '.join(keys)}")
        x = raw[key]
      elif len(keys) == 1:
        key, x = keys[0], raw[keys[0]]
      else:
        raise UserError(f"{path} holds several arrays ({', '.join(keys)}): choose one with --data_key")
  else:
    x = raw
  x = _check_numeric(np.asarray(x), "the array")
  if x.ndim == 2:
    x = x[None]
  if x.ndim != 3:
    raise UserError(f"the array must be [time, neurons] or [layers, time, neurons], got shape {x.shape}")
  if drop_nonfinite:
    keep = np.isfinite(x).all(axis=(0, 1))
    if not keep.all():
      warn(f"dropped {int((~keep).sum())} of {len(keep)} neurons with NaN/Inf "
           "(from every layer, to keep equal counts; --nan_policy=drop_neurons)")
      x = x[:, :, keep]
    if x.shape[2] == 0:
      raise UserError("every neuron has NaN/Inf values: nothing left to fit")
  _check_finite(x, "the array [layers, time, neurons]")
  layers = [bin_time(normalize(x_TN, normalize_method), bin_size) for x_TN in x]
  meta = dict(path=os.path.abspath(path), key=key, normalize=normalize_method, bin=bin_size,
              binning="mean of adjacent bins")
  return Dataset(np.stack(layers).astype(np.float32),
                 tuple(str(i) for i in range(len(layers))), "array", None, meta)


# ----------------------------------------------------------------------------
# Built-in synthetic data with a known dimension per layer.

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
    r = np.abs(r + 0.1 * r * (1.0 - r ** 2) + 0.15 * rng.standard_normal(n_osc))
    phase = phase + omega + 0.3 * rng.standard_normal(n_osc)
    r_T[t], phase_T[t] = r, phase
  xs = np.concatenate([r_T * np.cos(phase_T), r_T * np.sin(phase_T)], axis=1)[:, :dim]
  xs -= xs.mean(axis=0)
  u, _, _ = np.linalg.svd(xs, full_matrices=False)
  return u * np.sqrt(time)  # [time, dim], orthogonal columns of variance 1.


def make_synthetic(*, true_latents: Sequence[int] = SYNTHETIC_TRUE_LATENTS, neurons: int = 200,
                   time: int = 2000, noise: str = "gaussian", noise_std: float = 0.5,
                   seed: int = 0) -> Dataset:
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
  meta = dict(true_latents=list(map(int, true_latents)), neurons=neurons, time=time, noise=noise,
              noise_std=noise_std if noise == "gaussian" else None, seed=seed,
              generator="whitened noisy limit-cycle oscillators, random linear readout")
  return Dataset(np.stack(layers).astype(np.float32), names, "synthetic",
                 dict(zip(names, map(int, true_latents))), meta)


def make_lorenz(*, neurons: int = 60, time: int = 3000, layers: int = 1, base_rate: float = 1.0,
                gain: float = 0.9, seed: int = 0) -> Dataset:
  """The LFADS Lorenz benchmark: 3-D Lorenz states -> N neurons -> Poisson counts.

  sigma=10, rho=28, beta=8/3, RK4 with dt=0.01, one bin every 3 steps; each
  state z-scored; rate_n(t) = base_rate * exp(gain * w_n . z(t)) with w_n a
  random unit vector, so log-rates are linear in the 3-D state (true dimension 3).
  Each layer is its own trajectory and weights.
  """
  rng = np.random.default_rng(seed)
  sigma, rho, beta, dt, every = 10.0, 28.0, 8.0 / 3.0, 0.01, 3

  def f(s):
    return np.array([sigma * (s[1] - s[0]), s[0] * (rho - s[2]) - s[1], s[0] * s[1] - beta * s[2]])

  out = []
  for _ in range(layers):
    s = rng.normal(0.0, 1.0, 3) + np.array([0.0, 1.0, 25.0])
    states = np.empty((time, 3))
    for t in range(500 + time * every):  # 500 burn-in steps onto the attractor
      k1 = f(s); k2 = f(s + dt / 2 * k1); k3 = f(s + dt / 2 * k2); k4 = f(s + dt * k3)
      s = s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
      if t >= 500 and (t - 500) % every == 0:
        states[(t - 500) // every] = s
    z_T3 = (states - states.mean(axis=0)) / states.std(axis=0)
    w_3N = rng.standard_normal((3, neurons))
    w_3N /= np.linalg.norm(w_3N, axis=0, keepdims=True)
    rate = base_rate * np.exp(gain * z_T3 @ w_3N)
    out.append(rng.poisson(rate).astype(np.float64))
  names = tuple(str(i) for i in range(layers))
  meta = dict(neurons=neurons, time=time, base_rate=base_rate, gain=gain, seed=seed,
              generator="Lorenz (10, 28, 8/3), RK4 dt=0.01, bin = 3 steps, Poisson(exp(linear))")
  return Dataset(np.stack(out).astype(np.float32), names, "lorenz", {n: 3 for n in names}, meta)


def heldout_mask(num_layers: int, num_neurons: int, fraction: float, seed: int = 0) -> np.ndarray:
  """[layers, neurons] bool, True for neurons hidden from the encoder (co-smoothing).

  A fixed, seeded subset of round(fraction * neurons) neurons per layer.
  """
  if not 0.0 <= fraction < 1.0:
    raise UserError(f"--heldout_neurons must be in [0, 1), got {fraction}")
  n = int(round(fraction * num_neurons))
  if fraction > 0 and (n < 1 or n >= num_neurons):
    raise UserError(f"--heldout_neurons={fraction} leaves {n} of {num_neurons} neurons held out: "
                    "it must hold out at least one and keep at least one")
  rng = np.random.default_rng(seed + 7919)
  mask = np.zeros((num_layers, num_neurons), bool)
  for l in range(num_layers):
    mask[l, rng.choice(num_neurons, n, replace=False)] = True
  return mask


# ----------------------------------------------------------------------------
# Splits and batches.


def train_time(num_time: int, train_fraction: float) -> int:
  """Number of leading time bins in the training block; the rest is validation."""
  if not 0.0 < train_fraction < 1.0:
    raise UserError(f"--train_fraction must be in (0, 1), got {train_fraction}")
  return int(round(num_time * train_fraction))


def check_window(num_time: int, t_train: int, window: int) -> None:
  """Both blocks must hold at least one whole window."""
  if window < 1:
    raise UserError(f"--window must be positive, got {window}")
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


def load_nwb(path: str, *, series: str | None = None, bin_ms: float = 50.0,
             normalize_method: str = "none", bin_size: int = 1, seed: int = 0) -> Dataset:
  """Loads calcium series (RoiResponseSeries in Fluorescence/DfOverF) or spikes (Units) from NWB.

  Several series of one container (one per imaging plane) become layers,
  subsampled (seeded) to the smallest ROI count and cut to the shortest
  length. `series` picks a series or container by name, or "units" for the
  Units table, whose spike times are binned at `bin_ms`. Needs the optional
  `pynwb` (pip install 'nmas-jax[nwb]').
  """
  _check_file(path)
  try:
    import pynwb
    from pynwb.ophys import RoiResponseSeries
  except ImportError:
    raise UserError("--dataset=nwb needs pynwb: pip install 'nmas-jax[nwb]'") from None
  try:
    io = pynwb.NWBHDF5IO(path, "r")
    nwb = io.read()
  except Exception as e:  # noqa: BLE001
    raise UserError(f"cannot read {path} as NWB: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
  with io:
    found = [o for o in nwb.objects.values() if isinstance(o, RoiResponseSeries)]
    has_units = nwb.units is not None and len(nwb.units) > 0
    names = sorted({o.name for o in found} | {o.parent.name for o in found} | ({"units"} if has_units else set()))
    if series == "units" or (series is None and not found and has_units):
      if not has_units:
        raise UserError(f"{path} has no Units table; it holds: {', '.join(names) or 'nothing readable'}")
      spikes = [np.asarray(nwb.units.get_unit_spike_times(i)) for i in range(len(nwb.units))]
      start = min(float(s.min()) for s in spikes if len(s))
      stop = max(float(s.max()) for s in spikes if len(s))
      edges = np.arange(start, stop + bin_ms / 1000.0, bin_ms / 1000.0)
      x = np.stack([np.histogram(s, edges)[0] for s in spikes], axis=1).astype(np.float64)
      layers, layer_names, kind = [x], ("units",), f"units binned at {bin_ms} ms"
    else:
      if series is not None:
        found = [o for o in found if series in (o.name, o.parent.name)]
        if not found:
          raise UserError(f"--nwb_series={series!r} is not in {path}; it holds: {', '.join(names) or 'nothing readable'}")
      if not found:
        raise UserError(f"{path} holds no RoiResponseSeries and no Units table")
      containers = sorted({o.parent.name for o in found})
      if len(containers) > 1:
        raise UserError(f"{path} holds several series ({', '.join(sorted(o.parent.name + '/' + o.name for o in found))}): "
                        "choose one with --nwb_series")
      found = sorted(found, key=lambda o: o.name)
      layers, layer_names = [], []
      for o in found:
        x = _check_numeric(np.asarray(o.data[:]), f"series {o.name}")
        if x.ndim == 1:
          x = x[:, None]
        _check_finite(x, f"series {o.name} [time, rois]")
        layers.append(x)
        plane = getattr(getattr(o.rois, "table", None), "imaging_plane", None)
        layer_names.append(plane.name if plane is not None and len(found) > 1 else o.name)
      kind = f"{containers[0]} RoiResponseSeries"
  t = min(len(x) for x in layers)
  n = min(x.shape[1] for x in layers)
  rng = np.random.default_rng(seed)
  out = []
  for x in layers:
    idx = np.sort(rng.choice(x.shape[1], n, replace=False)) if x.shape[1] > n else np.arange(n)
    out.append(bin_time(normalize(x[:t, idx], normalize_method), bin_size))
  meta = dict(path=os.path.abspath(path), source=kind, normalize=normalize_method, bin=bin_size)
  return Dataset(np.stack(out).astype(np.float32), tuple(layer_names), "nwb", None, meta)


DATASETS = ("synthetic", "lorenz", "stringer", "array", "nwb")


def load_dataset(kind: str, *, path: str = "", key: str | None = None,
                 normalize_method: str = "mean_per_bin", bin_size: int = 2,
                 neurons_per_layer: int | None = None, seed: int = 0,
                 drop_nonfinite: bool = False, warn=print, nwb_series: str | None = None,
                 bin_ms: float = 50.0) -> Dataset:
  """Loads any supported dataset by name. `normalize_method`/`bin_size` apply to recorded data.

  The synthetic data is generated at its final resolution and scale, so it is
  neither normalised nor binned. With `drop_nonfinite`, neurons with NaN/Inf
  are dropped (and `warn` told how many) instead of refusing the data.
  """
  if normalize_method not in NORMALIZATIONS:
    raise UserError(f"unknown --normalize={normalize_method!r}: choose one of {', '.join(NORMALIZATIONS)}")
  if kind == "synthetic":
    return make_synthetic(seed=seed)
  if kind == "lorenz":
    return make_lorenz(seed=seed)
  if kind == "stringer":
    return load_stringer(path, neurons_per_layer=neurons_per_layer, normalize_method=normalize_method,
                         bin_size=bin_size, seed=seed, drop_nonfinite=drop_nonfinite, warn=warn)
  if kind == "array":
    ds = load_array(path, key=key, normalize_method=normalize_method, bin_size=bin_size,
                    drop_nonfinite=drop_nonfinite, warn=warn)
    if neurons_per_layer is not None:
      if neurons_per_layer > ds.num_neurons or neurons_per_layer < 1:
        raise UserError(f"--neurons_per_layer={neurons_per_layer} must be in 1..{ds.num_neurons} "
                        "(the array's neuron count)")
      idx = np.sort(np.random.default_rng(seed).choice(ds.num_neurons, neurons_per_layer, replace=False))
      ds = dataclasses.replace(ds, x_LTN=ds.x_LTN[:, :, idx])
    return ds
  if kind == "nwb":
    return load_nwb(path, series=nwb_series, bin_ms=bin_ms, normalize_method=normalize_method,
                    bin_size=bin_size, seed=seed)
  raise UserError(f"unknown --dataset={kind!r}: choose one of {', '.join(DATASETS)}")


SHUFFLED_SUFFIX = "/shuffled"


def with_shuffle_control(dataset: Dataset, seed: int = 0) -> Dataset:
  """Appends a control copy of every layer: each neuron circularly shifted in time by its own offset.

  The shift keeps every neuron's own statistics (and autocorrelation) but
  destroys structure shared between neurons, so a latent model should gain
  nothing from more latent dimensions on the control layers.
  """
  rng = np.random.default_rng(seed + 104729)
  t = dataset.num_time
  control = np.empty_like(dataset.x_LTN)
  for l in range(dataset.num_layers):
    offsets = rng.integers(max(1, t // 10), t - max(1, t // 10) + 1, size=dataset.num_neurons)
    idx = (np.arange(t)[:, None] - offsets[None, :]) % t
    control[l] = np.take_along_axis(dataset.x_LTN[l], idx, axis=0)
  names = dataset.layer_names + tuple(n + SHUFFLED_SUFFIX for n in dataset.layer_names)
  return dataclasses.replace(dataset, x_LTN=np.concatenate([dataset.x_LTN, control]), layer_names=names,
                             meta={**dataset.meta, "shuffle_control": "each neuron circularly shifted "
                                   "by its own random offset", "shuffle_seed": seed})


def as_dataset(x: Any, name: str = "array") -> Dataset:
  """A Dataset from a Dataset or a numpy array [time, neurons] / [layers, time, neurons]."""
  if isinstance(x, Dataset):
    return x
  arr = _check_numeric(np.asarray(x), "X")
  if arr.ndim == 2:
    arr = arr[None]
  if arr.ndim != 3:
    raise UserError(f"X must be [time, neurons] or [layers, time, neurons], got shape {arr.shape}")
  _check_finite(arr, "X")
  return Dataset(arr.astype(np.float32), tuple(str(i) for i in range(arr.shape[0])), name, None, {})
