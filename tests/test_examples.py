"""Every example and the Stringer config run (tiny settings) and print what they promise, so none
can rot."""

import ast
import json
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "NMAS_QUICK": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}


def _example(name, tmp_path):
  r = subprocess.run(
    [sys.executable, os.path.join(ROOT, "examples", name)],
    cwd=tmp_path,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout


def test_quickstart_a_reduced_default_sweep_recovers_the_true_dimensions(tmp_path):
  """The README's main job, reduced (the first two layers, latents 10,25,50, one seed, 120
  steps, default data and settings otherwise), chooses the smallest swept latent at or above
  each layer's truth."""
  from nmas_jax.data import synthetic

  out = _example("quickstart.py", tmp_path)
  chosen = ast.literal_eval(re.search(r"chosen dimension per layer: (\{.*\})", out).group(1))
  grid = (10, 25, 50)
  expected = [min(k for k in grid if k >= t) for t in synthetic.LINEAR_TRUE_LATENTS[:2]]
  assert chosen == dict(zip(("0", "1"), expected)) == {"0": 10, "1": 25}
  shape = ast.literal_eval(re.search(r"latent trajectory of layer 1: (\(.*\))", out).group(1))
  # [time, chosen latent] of layer 1
  assert shape == (synthetic.make_linear_gaussian().num_time, chosen["1"])
  assert (tmp_path / "quickstart_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_real_recording_prints_the_choice_its_report_holds(tmp_path):
  out = _example("real_recording.py", tmp_path)
  m = re.search(r"chosen dimension: (\d+) \| report: (\S+)", out)
  workdir = tmp_path / os.path.dirname(m.group(2))
  res = json.loads((workdir / "results.json").read_text())
  assert res["optimal_latent"] == {"0": int(m.group(1))} and int(m.group(1)) in (0, 1, 2, 4, 8, 16)
  assert res["data"]["num_neurons"] == 74 and res["complete"] is True  # 75 loaded, 1 dropped
  x = np.load(os.path.join(ROOT, "examples", "data", "mackevicius_hvc.npz"))["activity"]
  silent = np.flatnonzero(x[: res["blocks"]["train"][1]].std(axis=0) == 0).tolist()
  assert res["dropped_neurons"] == {"0": silent} and len(silent) == 1  # dropped, with a note
  assert f"| 0 | **{m.group(1)}** |" in (tmp_path / m.group(2)).read_text()


def test_embedded_encoder_is_the_sweeps_encoder(tmp_path):
  out = _example("embed_encoder.py", tmp_path)
  k = int(re.search(r"chosen latent size (\d+)", out).group(1))
  assert k in (2, 4, 8)
  # Our Encoder module with the sweep's weights gives the sweep's own latent trajectory.
  assert (
    float(re.search(r"max \|z - est.transform\(x\)\| on one window: (\S+)", out).group(1)) < 1e-5
  )
  r = float(re.search(r"held-out correlation with behaviour (\S+)", out).group(1))
  assert -1.0 <= r <= 1.0


def test_stringer_config_flags_run_on_a_stringer_format_file(tmp_path):
  rng = np.random.default_rng(0)
  z = np.repeat([0.0, 35.0], [9, 8])  # two planes: two layers
  raw = {"sresp": rng.gamma(2.0, 1.0, size=(17, 400)), "xyz": np.stack([z * 0, z * 0, z])}
  np.save(tmp_path / "stringer.npy", raw, allow_pickle=True)
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sweep",
      f"--flagfile={os.path.join(ROOT, 'experiments', 'configs', 'stringer.flags')}",
      f"--data_path={tmp_path / 'stringer.npy'}",
      "--neurons_per_layer=6",
      "--latents=1,2",
      "--seeds=1",
      "--steps=3",
      "--window=10",
      "--hidden=4",
      "--neuron_counts=3",
      f"--workdir={tmp_path / 'w'}",
    ],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads((tmp_path / "w" / "results.json").read_text())
  assert res["dataset"] == "stringer" and res["layers"] == ["0", "35"]
  assert res["data"]["bin"] == 2 and set(res["normalize"].values()) == {"mean_per_bin_all"}
  assert res["data"]["num_time"] == 200
  # The config turns on the LDS baseline; the counts axis (here 3 of 5 held-in neurons, and all)
  # and the spectrum come with it.
  assert set(res["baseline_optimal_latent"]) == {"pca", "fa", "lds"}
  assert res["scaling"]["counts"] == [3, 5] and set(res["spectrum"]) == set(res["layers"])
  assert (tmp_path / "w" / "scaling.png").exists()


def test_lfads_lorenz_example_predicts_held_out_trials_better_than_the_mean_rate(tmp_path):
  """LFADS in a plain optax loop (300 steps in the quick mode): 3 factors per held-out trial, and
  the held-out trials' spikes are better predicted than by each neuron's mean rate."""
  out = _example("lfads_lorenz.py", tmp_path)
  assert ast.literal_eval(re.search(r"factors: (\(.*\))", out).group(1)) == (40, 50, 3)
  bps = float(re.search(r"held-out trials: (-?[\d.]+) bits/spike", out).group(1))
  assert bps > 0, out
