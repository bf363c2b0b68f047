"""NWB input: calcium series (imaging planes become layers) or binned spikes of the Units table."""

from __future__ import annotations

import os

import numpy as np

from nmas_jax.config import DataSettings
from nmas_jax.data.dataset import (
  Dataset,
  bin_layer,
  binning_text,
  check_file,
  check_finite,
  check_numeric,
  is_counts,
)
from nmas_jax.errors import UserError

_D = DataSettings()  # the loader's defaults are the command line's


def _units(nwb, has_units: bool, bin_ms: float, path: str, names: list[str]):
  """The Units table's spike times binned at `bin_ms`: ([x [time, units]], names, source)."""
  if not has_units:
    raise UserError(
      f"{path} has no Units table; it holds: {', '.join(names) or 'nothing readable'}"
    )
  spikes = [np.asarray(nwb.units.get_unit_spike_times(i)) for i in range(len(nwb.units))]
  start = min(float(s.min()) for s in spikes if len(s))
  stop = max(float(s.max()) for s in spikes if len(s))
  edges = np.arange(start, stop + bin_ms / 1000.0, bin_ms / 1000.0)
  x = np.stack([np.histogram(s, edges)[0] for s in spikes], axis=1).astype(np.float64)
  layers, layer_names, kind = [x], ("units",), f"units binned at {bin_ms} ms"
  return layers, layer_names, kind


def _series(found: list, series: str | None, path: str, names: list[str]):
  """The RoiResponseSeries of one container, one layer each: (layers, names, source)."""
  if series is not None:
    found = [o for o in found if series in (o.name, o.parent.name)]
    if not found:
      raise UserError(
        f"--nwb_series={series!r} is not in {path}; it holds: "
        f"{', '.join(names) or 'nothing readable'}"
      )
  if not found:
    raise UserError(f"{path} holds no RoiResponseSeries and no Units table")
  containers = sorted({o.parent.name for o in found})
  if len(containers) > 1:
    raise UserError(
      f"{path} holds several series "
      f"({', '.join(sorted(o.parent.name + '/' + o.name for o in found))}): "
      "choose one with --nwb_series"
    )
  found = sorted(found, key=lambda o: o.name)
  layers, layer_names = [], []
  for o in found:
    x = check_numeric(np.asarray(o.data[:]), f"series {o.name}")
    if x.ndim == 1:
      x = x[:, None]
    check_finite(x, f"series {o.name} [time, rois]")
    layers.append(x)
    plane = getattr(getattr(o.rois, "table", None), "imaging_plane", None)
    layer_names.append(plane.name if plane is not None and len(found) > 1 else o.name)
  kind = f"{containers[0]} RoiResponseSeries"
  return layers, layer_names, kind


def load_nwb(
  path: str,
  *,
  series: str | None = None,
  bin_ms: float = _D.bin_ms,
  bin_size: int = 1,
  seed: int = _D.data_seed,
) -> Dataset:
  """Loads calcium series (RoiResponseSeries in Fluorescence/DfOverF) or spikes (Units) from NWB.

  Several series of one container (one per imaging plane) become layers,
  subsampled (seeded) to the smallest ROI count and cut to the shortest
  length. `series` picks a series or container by name, or "units" for the
  Units table, whose spike times are binned at `bin_ms`. Needs the optional
  `pynwb` (pip install 'nmas-jax[nwb]').
  """
  check_file(path)
  try:
    import pynwb
    from pynwb.ophys import RoiResponseSeries
  except ImportError:
    raise UserError("--dataset=nwb needs pynwb: pip install 'nmas-jax[nwb]'") from None
  try:
    io = pynwb.NWBHDF5IO(path, "r")
    nwb = io.read()
  except Exception as e:  # noqa: BLE001
    raise UserError(
      f"cannot read {path} as NWB: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    ) from None
  with io:
    found = [o for o in nwb.objects.values() if isinstance(o, RoiResponseSeries)]
    has_units = nwb.units is not None and len(nwb.units) > 0
    names = sorted(
      {o.name for o in found} | {o.parent.name for o in found} | ({"units"} if has_units else set())
    )
    if series == "units" or (series is None and not found and has_units):
      layers, layer_names, kind = _units(nwb, has_units, bin_ms, path, names)
    else:
      layers, layer_names, kind = _series(found, series, path, names)
  t = min(len(x) for x in layers)
  n = min(x.shape[1] for x in layers)
  rng = np.random.default_rng(seed)
  counts_data = all(is_counts(x) for x in layers)
  out = []
  for x in layers:
    idx = np.sort(rng.choice(x.shape[1], n, replace=False)) if x.shape[1] > n else np.arange(n)
    out.append(bin_layer(x[:t, idx], bin_size, counts_data))
  meta = dict(
    path=os.path.abspath(path), source=kind, bin=bin_size, binning=binning_text(counts_data)
  )
  return Dataset(
    np.stack(out).astype(np.float32), tuple(layer_names), "nwb", None, meta, counts=counts_data
  )
