"""Checkpoint and exact resume, divergence isolation, workdir identity, bad-input catalogue."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nmas_jax import config, files
from nmas_jax.data import splits, synthetic
from nmas_jax.errors import UserError
from nmas_jax.reporting import results
from nmas_jax.training import checkpoint, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def _args(data_path, workdir, steps=100, extra=()):
  return [
    sys.executable,
    "-m",
    "experiments.sweep",
    "--dataset=array",
    f"--data_path={data_path}",
    "--normalize=none",
    "--bin=1",
    "--latents=1,3",
    "--hidden=16",
    "--window=10",
    "--seeds=1",
    "--nobidirectional",
    "--batch_size=8",
    f"--steps={steps}",
    "--log_every=10",
    "--checkpoint_every=20",
    "--stop_patience=2",  # the stopping rule stops some models within 100 steps
    "--stop_tolerance=0.002",
    "--heldout_neurons=0.25",
    "--batching=by_latent",  # at these sizes auto is vmap
    f"--workdir={workdir}",
    *extra,
  ]


@pytest.fixture(scope="module")
def small_array(synthetic_npy):
  return synthetic_npy("small.npy", true_latents=(2, 3), neurons=8, time=400, seed=1)


def _final_params(workdir):
  """The latest checkpoint's params, as numpy leaves."""

  ck = checkpoint.Checkpointer(str(workdir))
  step = ck.latest_step()
  raw = ck.restore_raw(step)  # structure-free restore: nested dicts of arrays
  ck.close()
  return step, [np.asarray(a) for a in jax.tree.leaves(raw["state"]["params"])]


# Member 0 starts at --learning_rate: 2e-3 (not the family's 3e-3) leaves some groups training to
# the 100-step cap here while others stop by the rule.
PBT = ["--population=2", "--pbt_every=20", "--pbt_learning_rate=5e-4,5e-3", "--learning_rate=2e-3"]


def _wait_for_step_50(p):
  deadline = time.time() + 120
  for line in p.stdout:  # wait for a checkpoint past step 20 and a progress line after it
    if line.startswith("step 50/"):
      return
    assert time.time() < deadline
  raise AssertionError("the sweep ended before step 50")


def _assert_same_results(full, other, best=True):
  """Per-model metrics, the population's record (--population) and the final checkpoint's
  params equal, bit for bit (CPU)."""
  a, b = (
    json.loads((full / "results.json").read_text()),
    json.loads((other / "results.json").read_text()),
  )
  assert b["complete"] is True
  for ma, mb in zip(a["models"], b["models"]):
    for key in (
      "train_loss",
      "valid_mse",
      "cosmooth_mse",
      "test_cosmooth_mse",
      "best_step",
      "converged",
      "stopped_at_step",
    ):
      assert ma[key] == mb[key], (key, ma, mb)
  assert a.get("population") == b.get("population")
  step_a, pa = _final_params(full)
  step_b, pb = _final_params(other)
  assert step_a == step_b == 100
  for x, y in zip(pa, pb):
    np.testing.assert_array_equal(x, y)


def _truncate(directory):
  """A half-synced copy: every file under `directory` cut to half its size."""
  for f in directory.rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_kill_9_a_corrupt_checkpoint_or_sigterm_then_resume_equals_uninterrupted(
  small_array, tmp_path
):
  # Every run here is a population of 2 members per model (a tournament every 20 steps): the
  # resumed runs must also repeat the uninterrupted run's tournaments and winners.
  full = tmp_path / "full"
  r = subprocess.run(
    _args(small_array, full, extra=PBT), cwd=ROOT, env=ENV, capture_output=True, text=True
  )
  assert r.returncode == 0, r.stderr
  members = json.loads((full / "results.json").read_text())["population"]["members"]
  stopped = [m["stopped_at_step"] for m in members]
  assert min(stopped) < 100 == max(stopped)  # members stopped by the rule, and by the cap

  # kill -9 mid-run; then the latest checkpoint is truncated and a crashed save left a partial
  # directory: the resume moves the first aside, removes the second, and resumes from the one
  # before, to the same final results.
  killed = tmp_path / "killed"
  p = subprocess.Popen(
    _args(small_array, killed, extra=PBT),
    cwd=ROOT,
    env=ENV,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  _wait_for_step_50(p)
  p.send_signal(signal.SIGKILL)
  p.wait()
  partial = json.loads((killed / "results.json").read_text())
  assert partial["complete"] is False and 50 <= partial["evaluated_step"] < 100
  ck = killed / "checkpoints"
  steps = sorted(int(d) for d in os.listdir(ck) if d.isdigit())
  assert len(steps) >= 2 and steps[-1] < 100
  _truncate(ck / str(steps[-1]))
  (ck / "100.orbax-checkpoint-tmp-1").mkdir()
  r = subprocess.run(
    _args(small_array, killed, extra=PBT), cwd=ROOT, env=ENV, capture_output=True, text=True
  )
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert (
    "removed 100.orbax-checkpoint-tmp-1, a partial checkpoint left by an interrupted save" in lines
  )
  warning = next(l for l in lines if l.startswith(f"warning: the checkpoint at step {steps[-1]}"))
  assert warning.endswith(
    f"moved it to {killed / 'checkpoints_unreadable' / str(steps[-1])}; trying the one before"
  )
  assert f"resumed from the checkpoint at step {steps[-2]}" in lines
  assert (killed / "checkpoints_unreadable" / str(steps[-1])).is_dir()
  _assert_same_results(full, killed)
  for step in os.listdir(ck):  # now every checkpoint is unreadable: a one-line error
    for f in (ck / step).rglob("*"):
      if f.is_file():
        f.write_bytes(b"")
  r = subprocess.run(
    _args(small_array, killed, extra=PBT), cwd=ROOT, env=ENV, capture_output=True, text=True
  )
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
    f"error: no readable checkpoint in {ck} (the unreadable ones are in "
    f"{killed / 'checkpoints_unreadable'}): rerun with --overwrite to start again"
  )

  # SIGTERM (a preemption notice), with no regular checkpoint due for 1000 steps: the step
  # being taken finishes, is checkpointed, results.json is updated, and one line says so.
  term = tmp_path / "term"
  args = _args(small_array, term, extra=[*PBT, "--checkpoint_every=1000"])
  p = subprocess.Popen(
    args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  _wait_for_step_50(p)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 128 + signal.SIGTERM, err
  last = err.strip().splitlines()[-1]
  step = int(last.split()[3].rstrip(";"))
  assert last == f"preempted at step {step}; rerun the same command to resume" and 50 <= step < 100
  assert checkpoint.Checkpointer(str(term)).latest_step() == step
  partial = json.loads((term / "results.json").read_text())
  assert partial["complete"] is False and partial["evaluated_step"] == step
  r = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert f"resumed from the checkpoint at step {step}" in r.stdout
  _assert_same_results(full, term)

  # The report's advice for unconverged models: rerun with a larger --steps. The rerun resumes
  # from the 50-step run's last checkpoint, and selects and judges `converged` exactly as the
  # run that was 100 steps long from the start.
  extended = tmp_path / "extended"
  r = subprocess.run(
    _args(small_array, extended, steps=50, extra=PBT),
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
  )
  assert r.returncode == 0, r.stderr
  r = subprocess.run(
    _args(small_array, extended, extra=PBT), cwd=ROOT, env=ENV, capture_output=True, text=True
  )
  assert r.returncode == 0 and "resumed from the checkpoint at step 50" in r.stdout, r.stderr
  _assert_same_results(full, extended)


def test_a_different_sweep_is_refused_a_failed_write_keeps_the_file_and_reruns_resume(
  small_array, tmp_path
):
  w = tmp_path / "w"
  r = subprocess.run(
    _args(small_array, w, steps=20), cwd=ROOT, env=ENV, capture_output=True, text=True
  )
  assert r.returncode == 0, r.stderr
  # A different sweep in the workdir: refused in one line, every file untouched.
  before = {f: (w / f).read_bytes() for f in ("results.json", "results.csv", "sweep.json")}
  before["report.md"] = (w / "report.md").read_bytes()
  other = _args(small_array, w, steps=20, extra=["--latents=1,2"])
  r = subprocess.run(other, cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
    f"error: --workdir={w} holds a different sweep (--latents was 1,3, now 1,2): "
    "use another --workdir, or --overwrite to replace it"
  )
  assert {f: (w / f).read_bytes() for f in before} == before
  # A write that fails: one line, the earlier file intact; the same command then resumes.
  (w / "sweep.png").unlink()
  (w / "sweep.png").mkdir()  # a target that cannot be replaced
  args = _args(small_array, w, steps=40)
  r = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 1
  assert r.stderr.strip().splitlines() == [
    f"error: cannot write {w / 'sweep.png'}: Is a directory; the previous file is intact: fix "
    "the cause and rerun the same command to resume"
  ]
  assert (w / "report.md").read_bytes() == before["report.md"]  # written after the plot
  assert json.loads((w / "results.json").read_text())["evaluated_step"] == 40
  (w / "sweep.png").rmdir()
  r = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 0 and "resumed from the checkpoint at step 40" in r.stdout, r.stderr
  assert (w / "sweep.png").read_bytes()[:4] == b"\x89PNG"
  # --overwrite replaces the sweep.
  r = subprocess.run([*other, "--overwrite"], cwd=ROOT, env=ENV, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert json.loads((w / "results.json").read_text())["latents"] == [1, 2]
  # Every output that a later version must recognise carries the schema version.
  for name in ("sweep.json", "results.json"):
    assert json.loads((w / name).read_text())["schema_version"] == files.SCHEMA_VERSION
  ck = checkpoint.Checkpointer(str(w))
  assert ck.restore_aux(ck.latest_step())["schema_version"] == files.SCHEMA_VERSION
  ck.close()


def test_a_failed_checkpoint_save_is_one_line_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp

  from nmas_jax import DimensionSweep
  from nmas_jax.errors import WriteError

  x = synthetic.make_synthetic(true_latents=(2,), neurons=8, time=300, seed=0).x_LTN
  est = DimensionSweep(
    latents=(1, 2),
    hidden=8,
    window=10,
    batch_size=4,
    steps=20,
    log_every=10,
    seeds=1,
    bidirectional=False,
    verbose=False,
  )
  real_save = ocp.CheckpointManager.save

  def save(self, step, *a, **k):  # the disk fills up after the first checkpoint
    if step > 10:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(WriteError) as e:
    est.fit(x, workdir=str(tmp_path), checkpoint_every=10)
  assert str(e.value) == (
    f"cannot write {tmp_path / 'checkpoints' / '20'}: No space left on device; "
    "the previous file is intact: fix the cause and rerun the same command "
    "to resume"
  )
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 10
  monkeypatch.undo()
  est.fit(x, workdir=str(tmp_path), checkpoint_every=10)  # the cause fixed: resumes and completes
  assert est.results_["complete"] and checkpoint.Checkpointer(str(tmp_path)).latest_step() == 20


def test_claim_workdir_names_the_first_differing_setting(tmp_path):
  assert checkpoint.claim_workdir(str(tmp_path), {"a": 1, "b": 2}) is False
  assert checkpoint.claim_workdir(str(tmp_path), {"a": 1, "b": 2}) is True
  with pytest.raises(UserError, match="--b was 2, now 3"):
    checkpoint.claim_workdir(str(tmp_path), {"a": 1, "b": 3})


def test_a_workdir_of_an_older_schema_is_refused_in_one_line(small_array, tmp_path):
  """sweep.json as versions before the schema_version wrote it: a one-line error naming
  --overwrite, exit 2, nothing touched."""
  w = tmp_path / "old"
  w.mkdir()
  old = {"dataset": "array", "latents": [1, 3]}  # an identity without a schema_version
  (w / "sweep.json").write_text(json.dumps(old))
  r = subprocess.run(
    _args(small_array, w, steps=4), cwd=ROOT, env=ENV, capture_output=True, text=True
  )
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
    f"error: --workdir={w} was written by an older version of nmas-jax (schema 1, this one reads "
    f"{files.SCHEMA_VERSION}): use another --workdir, or --overwrite to replace it"
  ]
  assert json.loads((w / "sweep.json").read_text()) == old and not (w / "results.json").exists()


def test_injected_divergence_leaves_other_models_bit_identical():
  ds = synthetic.make_synthetic(true_latents=(2,), neurons=8, time=300, seed=0)
  cfg = config.Settings(
    latents=(1, 2, 4),
    hidden=8,
    window=10,
    batch_size=4,
    steps=30,
    log_every=30,
    bidirectional=False,
    seeds=1,
  )
  prep = splits.prepare(ds, cfg)
  ref = sweep.run_sweep(prep, cfg, log=lambda s: None)
  # Same sweep, same initial state, but model 1 gets an absurd learning rate: it must diverge alone.
  state = sweep.build(prep, cfg).init_states()
  lr = np.array(state.opt_state[1].hyperparams["learning_rate"])
  lr[1] = 1e30
  state.opt_state[1].hyperparams["learning_rate"] = lr
  fresh = lambda: jax.tree.map(lambda a: a.copy(), state)  # the sweep donates (consumes) its state

  bad = sweep.run_sweep(prep, cfg, log=lambda s: None, init_state=fresh())
  div = np.asarray(bad.state.diverged_at)
  assert div[1] >= 0 and div[0] == -1 and div[2] == -1

  for i in (0, 2):
    for x, y in zip(
      jax.tree.leaves(jax.tree.map(lambda a: a[i], ref.state.params)),
      jax.tree.leaves(jax.tree.map(lambda a: a[i], bad.state.params)),
    ):
      np.testing.assert_array_equal(x, y)
  res = results.results_dict(prep, cfg, bad)
  assert res["models"][1]["diverged_at_step"] == int(div[1])
  stopped = sweep.run_sweep(prep, cfg, log=lambda s: None, init_state=fresh(), nan_policy="stop")
  assert not stopped.complete and "diverged" in stopped.stopped and "latent 2" in stopped.stopped


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.sweep", *args],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
  )


def test_bad_input_catalogue(tmp_path, small_array):
  w = tmp_path / "w"
  np.save(tmp_path / "s.npy", np.array(["a", "b"]))
  np.save(tmp_path / "pickled.npy", np.array([[1, 2]], dtype=object), allow_pickle=True)
  (tmp_path / "afile").write_text("x")
  cases = [
    (
      ["--dataset=array", f"--data_path={tmp_path}"],
      f"error: data path is a directory, not a file: {tmp_path}",
    ),
    (
      ["--dataset=array", f"--data_path={tmp_path / 's.npy'}"],
      "error: the array has dtype <U1, not numeric",
    ),
    (
      ["--dataset=array", f"--data_path={tmp_path / 'pickled.npy'}"],
      f"error: {tmp_path / 'pickled.npy'} holds pickled objects, which --dataset=array refuses "
      "to load",
    ),
    (
      ["--dataset=array", f"--data_path={small_array}", "--latents=1.5"],
      "error: --latents has '1.5', not an integer",
    ),
    (
      [
        "--dataset=array",
        f"--data_path={small_array}",
        "--normalize=none",
        "--bin=1",
        "--latents=1",
        f"--workdir={tmp_path / 'afile' / 'sub'}",
      ],
      f"error: cannot write to --workdir={tmp_path / 'afile' / 'sub'}",
    ),
    (["--nan_policy=ignore"], "error: unknown --nan_policy='ignore'"),
    (["--dataset=nwb2"], "error: unknown --dataset='nwb2'"),
  ]
  for args, message in cases:
    if not any(a.startswith("--workdir") for a in args):
      args = [*args, f"--workdir={w}"]
    r = _cli(*args)
    assert r.returncode == 2, (args, r.stderr)
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), (args, r.stderr)
    assert not w.exists()


def test_nan_policy_drop_neurons_warns_and_runs(tmp_path):
  x = np.abs(np.random.default_rng(0).normal(size=(120, 6))) + 0.5
  x[5, 1] = np.nan
  np.save(tmp_path / "nan.npy", x)
  r = _cli(
    "--dataset=array",
    f"--data_path={tmp_path / 'nan.npy'}",
    "--latents=1,2",
    "--steps=4",
    "--bin=1",
    "--seeds=1",
    "--window=10",
    "--hidden=4",
    "--log_every=2",
    "--nan_policy=drop_neurons",
    f"--workdir={tmp_path / 'w'}",
  )
  assert r.returncode == 0, r.stderr
  assert "warning: dropped 1 of 6 neurons with NaN/Inf" in r.stderr
  assert json.loads((tmp_path / "w" / "results.json").read_text())["data"]["num_neurons"] == 5
