"""Every example and the Stringer config run (tiny settings), so none can rot."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "NMAS_QUICK": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}


@pytest.mark.parametrize("name, expect", [
    ("quickstart.py", "chosen dimension per layer:"),
    ("real_recording.py", "chosen dimension:"),
    ("embed_encoder.py", "held-out correlation with behaviour"),
])
def test_example_runs(name, expect, tmp_path):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], cwd=tmp_path, env=ENV,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert expect in r.stdout


def test_stringer_config_flags_run_on_a_stringer_format_file(tmp_path):
  rng = np.random.default_rng(0)
  z = np.repeat([0.0, 35.0, 70.0], [9, 8, 10])
  raw = {"sresp": rng.gamma(2.0, 1.0, size=(27, 400)), "xyz": np.stack([z * 0, z * 0, z])}
  np.save(tmp_path / "stringer.npy", raw, allow_pickle=True)
  r = subprocess.run([sys.executable, "-m", "experiments.sweep",
                      f"--flagfile={os.path.join(ROOT, 'experiments', 'configs', 'stringer.flags')}",
                      f"--data_path={tmp_path / 'stringer.npy'}", "--neurons_per_layer=6",
                      "--latents=1,2", "--seeds=1", "--steps=3", "--window=10", "--hidden=4",
                      f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads((tmp_path / "w" / "results.json").read_text())
  assert res["dataset"] == "stringer" and res["layers"] == ["0", "35", "70"]
  assert res["data"]["bin"] == 2 and res["data"]["normalize"] == "mean_per_bin"
  assert res["data"]["num_time"] == 200
