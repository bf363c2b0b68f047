"""Every flag family of the README on the built-in data, end to end at tiny settings, and the
honest edges: dF/F and sparse counts under default flags, no held-out neurons, degenerate data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
SMALL = [
  "--steps=6",
  "--log_every=3",
  "--hidden=8",
  "--batch_size=4",
  "--window=20",
  "--bootstrap=20",
  "--decoder_hidden=8",
]


def _cli(tmp_path, *args):
  workdir = tmp_path / "run"
  r = subprocess.run(
    [sys.executable, "-m", "experiments.sweep", *SMALL, *args, f"--workdir={workdir}"],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
  )
  return r, workdir


@pytest.mark.parametrize(
  "args, check",
  [
    # model flags, the nonlinear family, a control, another normalisation
    (
      [
        "--dataset=nonlinear",
        "--layers=0",
        "--latents=2,3",
        "--decoder=mlp",
        "--seeds=2",
        "--shuffle_control",
        "--normalize=none",
        "--dropout=0.1",
        "--gain_fraction=0.9",
        "--linear_skip",
      ],
      lambda r: (
        r["decoder"] == "mlp"
        and r["layers"] == ["0", "0/shuffled"]
        and r["config"]["linear_skip"]
        and set(r["normalize"].values()) == {"none"}
        and r["true_latent"] == {"0": 3, "0/shuffled": 0}
        and set(r["shuffle_control"]["layers"]["0"]) >= {"gain", "control_chosen"}
      ),
    ),
    # counts: Poisson through the exp link, bits per spike, the lstm decoder, a causal encoder
    (
      [
        "--dataset=lorenz",
        "--latents=1,3",
        "--decoder=lstm",
        "--nobidirectional",
        "--seeds=1",
        "--valid_fraction=0.15",
        "--train_fraction=0.6",
      ],
      lambda r: (
        r["likelihood"] == "poisson"
        and r["normalize"] == {"0": "none"}
        and all(m["test_cosmooth_bps"] is not None for m in r["models"])
        and r["blocks"]["valid"] == [3600, 4500]
      ),
    ),
    # nothing shared, other optimiser settings
    (
      [
        "--dataset=independent",
        "--latents=1,2",
        "--seeds=1",
        "--likelihood=gaussian",
        "--weight_decay=0.01",
        "--learning_rate=0.01",
      ],
      lambda r: r["likelihood"] == "gaussian" and r["optimal_latent"]["0"] in (0, 1, 2),
    ),
  ],
)
def test_flag_families_run_end_to_end_on_built_in_data(tmp_path, args, check):
  r, workdir = _cli(tmp_path, *args)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((workdir / "results.json").read_text())
  assert res["complete"] and check(res)
  # Progress lines name the held-out score the sweep selects on: Poisson NLL for counts.
  want = "Poisson NLL" if res["likelihood"] == "poisson" else "cosmooth_mse"
  assert f"best held-out {want} " in r.stdout
  report = (workdir / "report.md").read_text()
  for block in ("(validation block)", "(test block)", "time blocks: train"):
    assert block in report


def test_dff_and_sparse_counts_run_under_default_flags(tmp_path):
  """A baseline-centred dF/F array (about half its samples negative) and sparse spike counts,
  with nothing but --data_path and tiny training settings."""
  rng = np.random.default_rng(0)
  shared = np.cumsum(rng.standard_normal((800, 2)), axis=0) * 0.05
  dff = shared @ rng.standard_normal((2, 30)) + 0.3 * rng.standard_normal((800, 30))
  dff -= np.median(dff, axis=0)
  assert 0.4 < (dff < 0).mean() < 0.6
  np.save(tmp_path / "dff.npy", dff)
  r, workdir = _cli(
    tmp_path, f"--data_path={tmp_path / 'dff.npy'}", "--dataset=array", "--latents=1,2", "--seeds=1"
  )
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((workdir / "results.json").read_text())
  assert res["likelihood"] == "gaussian" and res["normalize"] == {"0": "zscore"}
  counts = rng.poisson(0.05, size=(800, 30))
  np.savez(tmp_path / "spikes.npz", spikes=counts)
  r, workdir = _cli(
    tmp_path,
    f"--data_path={tmp_path / 'spikes.npz'}",
    "--dataset=array",
    "--latents=1,2",
    "--seeds=1",
    "--overwrite",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((workdir / "results.json").read_text())
  assert res["likelihood"] == "poisson" and res["data"]["binning"].startswith("sum")


def test_no_held_out_neurons_gives_no_dimension(tmp_path):
  r, workdir = _cli(tmp_path, "--latents=2,5", "--seeds=1", "--heldout_neurons=0", "--layers=0")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (
    "warning: no neurons are held out (--heldout_neurons=0): reconstruction error keeps "
    "falling with the latent size and is not a dimension estimate, so none is reported" in r.stdout
  )
  res = json.loads((workdir / "results.json").read_text())
  assert res["optimal_latent"] == {"0": None}
  assert "None: none: no neurons are held out" in (workdir / "report.md").read_text()


def test_degenerate_data_is_a_one_line_error(tmp_path):
  np.save(tmp_path / "flat.npy", np.full((1000, 5), 2.0))
  r, workdir = _cli(
    tmp_path, f"--data_path={tmp_path / 'flat.npy'}", "--dataset=array", "--latents=2"
  )
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
    "error: layer 0 has no variance on the training block (every neuron is constant there): "
    "drop it with --layers or check the data"
  ]
  assert not workdir.exists()


def test_validate_population_with_draws_is_a_one_line_error():
  r = subprocess.run(
    [sys.executable, "-m", "experiments.validate", "--population=2", "--draws=1"],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
    "error: --population=2 runs with the per-family table only: drop --draws, --scaling and "
    "--lfads_trials, or --population"
  ]
