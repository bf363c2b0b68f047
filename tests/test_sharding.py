"""Models axis sharded over forced host devices and over two processes equals one device."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from nmas_jax.errors import UserError
from nmas_jax.training import cpu, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices):
  """The suite's environment with `devices` host devices (the other XLA_FLAGS kept)."""
  flags = [
    f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(cpu.DEVICE_COUNT_FLAG)
  ]
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": ROOT,
    "XLA_FLAGS": " ".join([*flags, f"{cpu.DEVICE_COUNT_FLAG}={devices}"]),
  }


SCRIPT = textwrap.dedent("""
    import dataclasses, json, jax, numpy as np
    from nmas_jax import config
    from nmas_jax.data import splits, synthetic
    from nmas_jax.evaluation import evaluate
    from nmas_jax.training import sharding, sweep, table as tbl, train
    assert jax.device_count() == 8
    ds = synthetic.make_synthetic(true_latents=(2, 4, 3), neurons=16, time=600, seed=0)
    # A population of 2 members per model, a round every 20 steps: 18 models, padded to 24 on
    # 8 devices, so a group's members sit on different shards.
    cfg = config.Settings(latents=(1, 2, 4), hidden=8, window=20, batch_size=8, steps=40,
                          bidirectional=False, learning_rate=1e-2, log_every=40, seeds=1,
                          baselines=(), population=2, pbt_every=20)
    prep = splits.prepare(ds, cfg)
    out, quiet = {}, lambda s: None
    for name, mesh in [("one", sharding.make_mesh("auto", jax.devices()[:1])),
                       ("eight", sharding.make_mesh("auto")),
                       ("four_by_two", sharding.make_mesh("models:4,data:2"))]:
      o = sweep.run_sweep(prep, cfg, log=quiet, mesh=mesh)
      ev = {} if name == "four_by_two" else evaluate.evaluate_sweep(prep, cfg, o, log=quiet)
      out[name] = {"valid": o.valid["valid/mse"].tolist(), "optimal": ev.get("optimal_latent"),
                   "n": len(o.table), "pop": o.population}
    cfg = dataclasses.replace(cfg, population=1)
    mesh = sharding.make_mesh("auto")
    table = tbl.ModelTable.build(3, cfg.latents, 1).padded(sharding.padded_size(9, mesh))
    state = tbl.init_states(cfg, table, 16, train.optimizer_for(cfg),
                            out_sharding=sharding.models_sharding(mesh))
    leaf = jax.tree.leaves(state.params)[0]
    out["shards"] = sorted({s.data.shape[0] for s in leaf.addressable_shards})
    out["devices"] = len(leaf.addressable_shards)
    out["padded"] = len(table)
    print("RESULT " + json.dumps(out))
""")


def test_sharded_sweep_equals_one_device():
  r = subprocess.run(
    [sys.executable, "-c", SCRIPT], env=_env(8), capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
  assert (
    res["padded"] == 16 and res["devices"] == 8 and res["shards"] == [2]
  )  # 1/8 of 16 models each
  for name in ("eight", "four_by_two"):
    # The same tournaments and winners, and the winners' scores, as on one device; inert padding
    # never reaches the results (9 winners).
    pop, ref = res[name]["pop"], res["one"]["pop"]
    assert pop["winners"] == ref["winners"] and res[name]["n"] == 9
    assert [m["copied_from"] for m in pop["members"]] == [m["copied_from"] for m in ref["members"]]
    np.testing.assert_allclose(res[name]["valid"], res["one"]["valid"], rtol=1e-5)
  assert res["eight"]["optimal"] == res["one"]["optimal"]


def test_mesh_spec_errors():
  with pytest.raises(UserError, match="needs 4 devices, but 1 are visible"):
    sharding.make_mesh("models:4")
  with pytest.raises(UserError, match="is not like 'models:4,data:2'"):
    sharding.make_mesh("layers:2")
  assert dict(sharding.make_mesh("auto").shape) == {"models": 1, "data": 1}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_then_one_device_resuming_their_checkpoint_equal_one_device(tmp_path):
  """Two processes (two host devices each) train to step 20 and checkpoint; one process on one
  device resumes that checkpoint to step 40: its results equal a one-device run's, which holds
  only if the two processes' steps equal one device's and the checkpoint moves between them."""
  args = [
    "--latents=1,2,4",
    "--hidden=8",
    "--window=20",
    "--batch_size=8",
    "--seeds=1",
    "--nobidirectional",
    "--log_every=20",
    "--checkpoint_every=20",
    "--learning_rate=0.01",
  ]
  ds_args = ["--dataset=array", f"--data_path={tmp_path / 'x.npy'}", "--normalize=none", "--bin=1"]
  from nmas_jax.data import synthetic

  np.save(
    tmp_path / "x.npy",
    synthetic.make_synthetic(true_latents=(2, 4, 3), neurons=16, time=600, seed=0).x_LTN,
  )
  run = lambda workdir, *extra: subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sweep",
      *args,
      *ds_args,
      f"--workdir={workdir}",
      "--steps=40",
      *extra,
    ],
    cwd=ROOT,
    env=_env(1),
    capture_output=True,
    text=True,
    timeout=600,
  )
  one = run(tmp_path / "one")
  assert one.returncode == 0, one.stderr[-2000:]
  port = _free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.sweep",
        *args,
        *ds_args,
        f"--workdir={tmp_path / 'two'}",
        "--steps=20",
        "--distributed",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=ROOT,
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
  assert "step 20/20" in outs[0][0] and "step 20/20" not in outs[1][0]  # process 0 alone reports
  moved = run(tmp_path / "two")
  assert moved.returncode == 0 and "resumed from the checkpoint at step 20" in moved.stdout, (
    moved.stderr[-2000:]
  )
  a = json.loads((tmp_path / "one" / "results.json").read_text())
  b = json.loads((tmp_path / "two" / "results.json").read_text())
  np.testing.assert_allclose(
    [m["valid_mse"] for m in b["models"]], [m["valid_mse"] for m in a["models"]], rtol=1e-5
  )
  assert a["optimal_latent"] == b["optimal_latent"] and b["complete"] is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tune_malloc_applies_its_settings_unless_the_user_tuned_malloc():
  code = "from nmas_jax.training import cpu; print(sorted(cpu.tune_malloc()))"
  env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
  run = lambda env: subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
  ).stdout.strip()
  import platform

  expected = sorted(cpu.MALLOC_OPTIONS) if platform.libc_ver()[0] == "glibc" else []
  assert run(env) == str(expected)
  assert run({**env, "MALLOC_TOP_PAD_": "4096"}) == "[]"
  assert run({**env, "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=4096"}) == "[]"


LANES_SCRIPT = textwrap.dedent("""
    import json, sys
    from nmas_jax.training import cpu
    added = cpu.tune_cpu_flags(lanes=2)
    import jax, jax.numpy as jnp, numpy as np
    from nmas_jax import config, data
    from nmas_jax.data import splits
    from nmas_jax.training import by_latent, sharding, stepper, sweep
    mesh = sharding.make_mesh("auto")
    out = {"added": added, "devices": jax.device_count(), "mesh": int(mesh.devices.size),
           "lanes": len(by_latent.lane_devices(mesh)),
           "batching": stepper.resolve_batching("auto", mesh)}
    cfg = config.Settings(latents=(1, 2, 4), hidden=8, window=20, batch_size=8, heldout_neurons=0,
                          bidirectional=False,
                          seeds=1)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 200, 16)))  # 2 layers: groups of 2
    prep = splits.prepare(data.Dataset(x, ("0", "1"), "array"), cfg)
    state, loss = {}, {}
    for name, lanes in (("two", None), ("one", jax.devices()[:1])):
      b = sweep.build(prep, cfg, mesh=mesh, batching="by_latent", lanes=lanes)
      st = b.stepper.pack(b.init_states())
      b.stepper.compile(st)
      for i in range(4):
        st, m = b.stepper.step(st, i)
      out[name] = {"lanes": b.stepper.lanes, "on": sorted({d.id for p in st for d in
                                                           jax.tree.leaves(p)[0].devices()})}
      state[name], loss[name] = jax.device_get(b.stepper.unpack(st)), np.asarray(m["train/loss"])
      out[name]["diverged"] = np.asarray(b.stepper.diverged_at(st)).tolist()
    out["param_diff"] = max(float(np.max(np.abs(a - b))) for a, b in
                            zip(jax.tree.leaves(state["two"]), jax.tree.leaves(state["one"])))
    out["loss"] = {k: v.tolist() for k, v in loss.items()}
    print("RESULT " + json.dumps(out))
""")


def test_by_latent_on_two_cpu_lanes_equals_one_lane():
  """tune_cpu_flags makes 2 host devices as lanes: the auto mesh stays one device, by_latent's
  chunk programs run on both lanes, and the models train exactly as on one lane."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)
  env.pop(sharding.LANES_ENV, None)
  r = subprocess.run(
    [sys.executable, "-c", LANES_SCRIPT], env=env, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
  assert f"{cpu.DEVICE_COUNT_FLAG}=2" in res["added"]
  assert (res["devices"], res["mesh"], res["lanes"], res["batching"]) == (2, 1, 2, "by_latent")
  assert res["two"]["lanes"] == 2 and res["two"]["on"] == [0, 1]
  assert res["one"]["lanes"] == 1 and res["one"]["on"] == [0]
  assert res["two"]["diverged"] == res["one"]["diverged"] == [-1] * 6
  assert len(res["loss"]["two"]) == 6 and all(np.isfinite(res["loss"]["two"]))
  np.testing.assert_allclose(res["loss"]["two"], res["loss"]["one"], rtol=1e-6)
  assert res["param_diff"] <= 1e-6


def test_tune_cpu_flags_keeps_the_users_device_count():
  code = (
    "from nmas_jax.training import cpu, sharding; import os; a = cpu.tune_cpu_flags(); "
    "import jax; print(jax.device_count(), sharding.make_mesh('auto').devices.size, "
    "[f for f in a if f.startswith(cpu.DEVICE_COUNT_FLAG)], os.environ.get(sharding.LANES_ENV))"
  )
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": ROOT,
    "XLA_FLAGS": f"{cpu.DEVICE_COUNT_FLAG}=3",
  }
  env.pop(sharding.LANES_ENV, None)
  out = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
  ).stdout.strip()
  assert out == "3 3 [] None"  # the user's devices are a mesh: "auto" spreads the models over all 3


def test_tune_cpu_flags_does_nothing_once_jax_has_started():
  """backend_started (the one private JAX call) is False before JAX starts and True after;
  tune_cpu_flags then changes nothing."""
  code = (
    "from nmas_jax.training import cpu; import os, jax; "
    "before = cpu.backend_started(); jax.devices(); "
    "env = dict(os.environ); added = cpu.tune_cpu_flags(lanes=4); "
    "print(before, cpu.backend_started(), added, dict(os.environ) == env)"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  out = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
  ).stdout.strip()
  assert out == "False True [] True"


def test_a_lost_process_is_named_in_one_line_and_the_sweep_resumes(tmp_path):
  """Two local processes; process 1 killed mid-run: process 0 names it, with the last complete
  checkpoint, before any error of JAX's runtime, and well within the heartbeat timeout; running
  both again resumes from that checkpoint and completes."""
  from nmas_jax.data import synthetic

  np.save(
    tmp_path / "x.npy",
    synthetic.make_synthetic(true_latents=(2, 3), neurons=12, time=800, seed=0).x_LTN,
  )
  port = _free_port()
  cmd = lambda i: [
    sys.executable,
    "-m",
    "experiments.sweep",
    "--dataset=array",
    f"--data_path={tmp_path / 'x.npy'}",
    "--normalize=none",
    "--bin=1",
    "--latents=1,2",
    "--hidden=8",
    "--window=20",
    "--batch_size=8",
    "--steps=400",
    "--log_every=20",
    "--checkpoint_every=20",
    "--seeds=1",
    "--nobidirectional",
    "--heartbeat_timeout_s=10",
    f"--workdir={tmp_path / 'w'}",
    "--distributed",
    f"--coordinator_address=127.0.0.1:{port}",
    "--num_processes=2",
    f"--process_id={i}",
  ]
  procs = [
    subprocess.Popen(
      cmd(i), cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for i in range(2)
  ]
  for line in procs[0].stdout:
    if line.startswith("step 60/"):
      break
  procs[1].kill()
  t0 = time.time()
  _, err = procs[0].communicate(timeout=120)
  procs[1].communicate()
  assert procs[0].returncode != 0 and time.time() - t0 < 10
  errors = [l for l in err.splitlines() if l.startswith("error:")]
  assert errors and errors[0].startswith("error: process 1 stopped responding (no heartbeat for ")
  step = int(errors[0].split("checkpoint is at step ")[1].split(";")[0])
  assert step >= 40 and errors[0].endswith(
    f"the last complete checkpoint is at step {step}; rerun "
    "every process with the same command to resume from it"
  )
  assert err.index(errors[0]) == min(err.index(l) for l in errors)
  port = _free_port()
  procs = [
    subprocess.Popen(
      cmd(i), cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:]
  assert f"resumed from the checkpoint at step {step}" in outs[0][0]
  assert json.loads((tmp_path / "w" / "results.json").read_text())["complete"] is True
