"""NWB input: calcium series (planes become layers) and binned Units, written with pynwb and read
back."""

import sys
from datetime import datetime, timezone

import numpy as np
import pytest

from nmas_jax.data import loaders as data
from nmas_jax.errors import UserError

pynwb = pytest.importorskip("pynwb")


def _write(path, planes=(("plane0", 7), ("plane1", 5)), units=True, also_dff=False, t=60):
  from pynwb import NWBHDF5IO, NWBFile
  from pynwb.ophys import (
    DfOverF,
    Fluorescence,
    ImageSegmentation,
    OpticalChannel,
    RoiResponseSeries,
  )

  rng = np.random.default_rng(0)
  nwb = NWBFile(
    session_description="test",
    identifier="nmas",
    session_start_time=datetime(2020, 1, 1, tzinfo=timezone.utc),
  )
  device = nwb.create_device(name="scope")
  ophys = nwb.create_processing_module(name="ophys", description="ophys")
  seg = ImageSegmentation()
  ophys.add(seg)
  fl = Fluorescence()
  dff = DfOverF() if also_dff else None
  truth = {}
  for name, n in planes:
    plane = nwb.create_imaging_plane(
      name=name,
      optical_channel=OpticalChannel(name="ch", description="green", emission_lambda=500.0),
      description=name,
      device=device,
      excitation_lambda=900.0,
      imaging_rate=10.0,
      indicator="GCaMP",
      location="V1",
    )
    ps = seg.create_plane_segmentation(description=name, imaging_plane=plane, name=f"seg_{name}")
    for _ in range(n):
      ps.add_roi(image_mask=np.ones((4, 4)))
    rois = ps.create_roi_table_region(region=list(range(n)), description="all")
    x = rng.uniform(0.5, 2.0, size=(t, n))
    truth[name] = x
    fl.add_roi_response_series(
      RoiResponseSeries(name=f"rrs_{name}", data=x, rois=rois, unit="a.u.", rate=10.0)
    )
    if dff is not None:
      dff.add_roi_response_series(
        RoiResponseSeries(name=f"dff_{name}", data=x, rois=rois, unit="a.u.", rate=10.0)
      )
  ophys.add(fl)
  if dff is not None:
    ophys.add(dff)
  if units:
    nwb.add_unit(spike_times=[0.01, 0.02, 0.26, 0.9])
    nwb.add_unit(spike_times=[0.3, 0.31, 0.32])
  with NWBHDF5IO(str(path), "w") as io:
    io.write(nwb)
  return truth


def test_calcium_planes_become_layers(tmp_path):
  truth = _write(tmp_path / "a.nwb")
  ds = data.load_nwb(str(tmp_path / "a.nwb"))
  assert ds.layer_names == ("plane0", "plane1") and ds.x_LTN.shape == (2, 60, 5)
  np.testing.assert_allclose(ds.x_LTN[1], truth["plane1"], rtol=1e-6)
  # plane0's 7 ROIs were subsampled to 5 of its own columns
  for col in ds.x_LTN[0].T:
    assert any(np.allclose(col, c, rtol=1e-6) for c in truth["plane0"].T)


def test_units_are_binned(tmp_path):
  _write(tmp_path / "u.nwb")
  ds = data.load_nwb(str(tmp_path / "u.nwb"), series="units", bin_ms=100.0)
  assert ds.layer_names == ("units",)
  counts = ds.x_LTN[0]
  assert counts.sum(axis=0).tolist() == [4.0, 3.0]
  assert counts[0, 0] == 2.0  # 0.01 and 0.02 s fall in the first 100 ms bin


def test_series_choice_and_errors(tmp_path):
  _write(tmp_path / "b.nwb", also_dff=True)
  with pytest.raises(UserError, match="holds several series .*choose one with --nwb_series"):
    data.load_nwb(str(tmp_path / "b.nwb"))
  ds = data.load_nwb(str(tmp_path / "b.nwb"), series="DfOverF")
  assert ds.num_layers == 2
  ds = data.load_nwb(str(tmp_path / "b.nwb"), series="rrs_plane1")
  assert ds.num_layers == 1 and ds.num_neurons == 5
  with pytest.raises(UserError, match="--nwb_series='nope' is not in"):
    data.load_nwb(str(tmp_path / "b.nwb"), series="nope")


def test_missing_pynwb_gives_a_clear_error(tmp_path, monkeypatch):
  _write(tmp_path / "c.nwb")
  monkeypatch.setitem(sys.modules, "pynwb", None)
  with pytest.raises(UserError, match=r"--dataset=nwb needs pynwb: pip install 'nmas-jax\[nwb\]'"):
    data.load_nwb(str(tmp_path / "c.nwb"))
