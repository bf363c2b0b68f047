"""Sweep: batched training on tiny data, the CLI's files, and its one-line errors."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nmas_jax import config, data
from nmas_jax.data import splits, synthetic
from nmas_jax.errors import UserError
from nmas_jax.reporting import results, tables
from nmas_jax.training import by_latent, selection, stepper, sweep
from nmas_jax.training.table import ModelTable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    [sys.executable, "-m", "experiments.sweep", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope="module")
def tiny_array(synthetic_npy):
  return synthetic_npy("tiny.npy", true_latents=(2, 4), neurons=12, time=300, seed=0)


TINY = [
  "--dataset=array",
  "--normalize=none",
  "--bin=1",
  "--latents=1,2,4",
  "--hidden=8",
  "--nobidirectional",
  "--window=10",
  "--batch_size=4",
  "--steps=40",
  "--log_every=10",
  "--seeds=2",
  "--learning_rate=0.02",
]


def test_cli_sweep_lowers_every_loss_and_writes_results(tiny_array, tmp_path):
  """A sweep of two decoders: every model's loss falls, and results.json has each decoder's
  estimate (`optimal_latent` the first's), the files, and a flags file that reproduces it."""
  workdir = tmp_path / "run"
  r = _cli(
    *TINY,
    f"--data_path={tiny_array}",
    f"--workdir={workdir}",
    "--shared_model",
    "--decoder=linear,mlp",
    "--seeds=1",  # two decoders at one seed: as many models as one decoder at two
  )
  assert r.returncode == 0, r.stderr
  assert "step 40/40" in r.stdout and "steps/s" in r.stdout and "ETA" in r.stdout
  res = json.loads((workdir / "results.json").read_text())
  assert res["dataset"] == "array" and res["latents"] == [1, 2, 4] and res["layers"] == ["0", "1"]
  assert res["seeds"] == [0] and res["steps"] == 40 and res["complete"] is True
  assert len(res["models"]) == 2 * 3 * 2
  assert {(m["layer"], m["latent"], m["seed"], m["decoder"]) for m in res["models"]} == {
    (l, k, 0, d) for l in ("0", "1") for k in (1, 2, 4) for d in ("linear", "mlp")
  }
  by_dec = res["optimal_latent_by_decoder"]
  assert set(by_dec) == {"linear", "mlp"} and by_dec["linear"] == res["optimal_latent"]
  assert set(res["optimal_latent_interval_by_decoder"]) == {"linear", "mlp"}
  assert all(by_dec["mlp"][l] in (0, 1, 2, 4) for l in ("0", "1"))
  for m in res["models"]:
    assert np.isfinite(m["train_loss"]) and np.isfinite(m["valid_mse"])
  csv_lines = (workdir / "results.csv").read_text().strip().splitlines()
  assert csv_lines[0].startswith("layer,latent,seed,decoder,train_loss,valid_mse")
  assert len(csv_lines) == 13
  assert (workdir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (workdir / "decoding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  acc = res["layer_accuracy"]
  assert (
    acc["latents"] == [1, 2, 4]
    and acc["chance"] == 0.5
    and all(len(a) == 1 for a in acc["accuracy"])
  )
  report_md = (workdir / "report.md").read_text()
  for section in (
    "## Data",
    "## Held-out results",
    "## Chosen dimension",
    "## Layer decoding",
    "## Flags",
  ):
    assert section in report_md
  assert any(
    f.startswith("events.out.tfevents")
    for f in os.listdir(workdir / "tb" / "layer=0,latent=1,seed=0,decoder=mlp")
  )
  flags = (workdir / "flags.txt").read_text()
  assert "--latents=1,2,4" in flags and "--steps=40" in flags
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  by_model = {}
  for row in rows:
    by_model.setdefault(row["model"], []).append(row["train/loss"])
  assert len(by_model) == 12
  for losses in by_model.values():
    assert losses[-1] < losses[0]
  # The flags file reproduces the run.
  r2 = _cli(
    f"--flagfile={workdir / 'flags.txt'}", f"--workdir={tmp_path / 'again'}", "--noshared_model"
  )
  assert r2.returncode == 0, r2.stderr
  res2 = json.loads((tmp_path / "again" / "results.json").read_text())
  assert [m["valid_mse"] for m in res2["models"]] == [m["valid_mse"] for m in res["models"]]


@pytest.mark.parametrize(
  "args, message",
  [
    (["--data_path=/nonexistent/x.npy"], "error: data file not found: /nonexistent/x.npy"),
    (["--latents="], "error: --latents is empty"),
    (
      ["--latents=0,2"],
      "error: --latents has 0: latent sizes must be positive integers (0 is "
      "a band count of --model=multiscale only)",
    ),
    (["--latents=-3"], "error: --latents has -3: latent sizes must be positive integers"),
    (["--latents=2,x"], "error: --latents has 'x', not an integer"),
    (["--latents=2,2"], "error: --latents lists 2 twice"),
    (["--latents=1,13"], "error: latent size 13 exceeds the 12 neurons per layer"),
    (["--window=100"], "error: --window=100 is longer than a block"),
    (["--layers=0,7"], "error: unknown layer '7' in --layers: this dataset has layers 0, 1"),
    (["--decoder=mlp,mlp"], "error: --decoder=mlp,mlp names one value twice: give each once"),
  ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_array, tmp_path, args, message):
  workdir = tmp_path / "run"
  base = [a for a in TINY if not any(a.startswith(b.split("=")[0] + "=") for b in args)]
  if not any(a.startswith("--data_path") for a in args):
    base.append(f"--data_path={tiny_array}")
  r = _cli(*base, *args, f"--workdir={workdir}")
  assert r.returncode != 0
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and lines[0].startswith(message), r.stderr
  assert not workdir.exists()


def test_cli_nan_data_is_refused(tmp_path):
  x = np.ones((50, 4))
  x[3, 2] = np.inf
  np.save(tmp_path / "nan.npy", x)
  r = _cli(
    "--dataset=array",
    f"--data_path={tmp_path / 'nan.npy'}",
    "--latents=1",
    f"--workdir={tmp_path / 'w'}",
  )
  assert r.returncode != 0
  assert (
    "error: the array [layers, time, neurons] has 1 non-finite values (NaN or Inf); "
    "the first is at index (0, 3, 2)" in r.stderr
  )
  assert not (tmp_path / "w").exists()


def test_sweep_error_falls_until_the_true_dimension():
  ds = synthetic.make_synthetic(true_latents=(2, 5), neurons=48, time=1000, noise_std=0.3, seed=0)
  cfg = config.Settings(
    latents=(1, 2, 5, 10),
    hidden=24,
    window=20,
    batch_size=16,
    steps=300,
    bidirectional=False,
    seeds=1,
    learning_rate=1e-2,
    log_every=300,
  )
  prep = splits.prepare(ds, cfg)
  out = sweep.run_sweep(prep, cfg, log=lambda s: None)
  res = results.results_dict(prep, cfg, out)
  mse = {(m["layer"], m["latent"]): m["valid_mse"] for m in res["models"]}
  assert res["true_latent"] == {"0": 2, "1": 5}
  # Below the true dimension each added latent buys a large drop ...
  assert mse["0", 1] > 1.5 * mse["0", 2]
  assert mse["1", 1] > mse["1", 2] > 1.2 * mse["1", 5]
  # ... beyond it only noise is left to fit: the drop is small.
  assert mse["0", 5] > 0.7 * mse["0", 2]
  assert mse["1", 10] > 0.7 * mse["1", 5]


@pytest.mark.parametrize("decoder", ["linear", "lstm"])
def test_a_latent_added_above_the_grid_changes_no_trained_model(decoder):
  """Issue 15's grid invariance needs the curve itself not to depend on the grid: the models
  of latent 1 and 2 train to the same scores whether the grid stops at 2 or goes on to 4 (every
  model is initialised as its unpadded self; the rest is rounding)."""
  ds = synthetic.make_synthetic(true_latents=(2,), neurons=10, time=400, seed=1)
  scores = []
  for latents in ((1, 2), (1, 2, 4)):
    cfg = config.Settings(
      latents=latents,
      hidden=8,
      window=10,
      batch_size=4,
      steps=20,
      log_every=20,
      decoder=decoder,
      seeds=2,
    )
    prep = splits.prepare(ds, cfg)
    res = results.results_dict(prep, cfg, sweep.run_sweep(prep, cfg, log=lambda s: None))
    scores.append(
      {(m["latent"], m["seed"]): m["valid_mse"] for m in res["models"] if m["latent"] <= 2}
    )
  assert scores[0].keys() == scores[1].keys() and len(scores[0]) == 4
  for key, value in scores[0].items():
    np.testing.assert_allclose(scores[1][key], value, rtol=1e-4)


def _two_steps_each(prep, cfg, mesh):
  """[(stepper, state, metrics) after two steps] of the vmap and the by_latent stepper."""
  out = []
  for batching in ("vmap", "by_latent"):
    b = sweep.build(prep, cfg, mesh=mesh, batching=batching)
    assert b.stepper.batching == batching
    state = b.stepper.pack(b.init_states())
    for step in range(2):
      state, metrics = b.stepper.step(state, step)
    out.append((b.stepper, state, metrics))
  return out


def test_by_latent_batching_equals_one_vmap():
  """The by_latent stepper (each latent size at its own width, state packed per latent size)
  steps every model exactly as the padded vmap stepper does, in the table's order, for layers x
  seeds x latents and the shared model; unpack restores the padded layout."""
  import jax

  from nmas_jax.training import sharding

  cfg = config.Settings(
    latents=(3, 1, 2),
    seeds=2,
    batch_size=3,
    window=5,
    hidden=6,
    decoder="lstm",
    heldout_neurons=0.25,
    likelihood="gaussian",
    bidirectional=False,
    dropout=0.2,
  )
  rng = np.random.default_rng(0)
  ds = data.Dataset(rng.normal(size=(2, 60, 8)).astype(np.float32), ("0", "1"), "array")
  mesh = sharding.make_mesh("auto", devices=jax.devices()[:1])
  for shared, seeds in ((False, 2), (True, 1)):
    cfg = dataclasses.replace(cfg, seeds=seeds)
    prep = splits.prepare(ds, cfg, shared=shared)
    layers = 1 if shared else 2
    (_, s_v, m_v), (stepper_b, s_b, m_b) = _two_steps_each(prep, cfg, mesh)
    # One part per latent size, at its width, [groups] models (no such axis for one group) ...
    groups = (layers * seeds,) if layers * seeds > 1 else ()
    assert isinstance(s_b, tuple) and len(s_b) == 3
    assert s_b[1].params["encoder"]["to_latent"]["kernel"].shape == groups + (6, 1)
    np.testing.assert_allclose(m_b["train/loss"], m_v["train/loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_b), jax.tree.leaves(stepper_b.pack(s_v))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # ... and unpacked: the padded layout, with zeros in the units a width-k model never uses.
    full = stepper_b.unpack(s_b)
    np.testing.assert_array_equal(full.latent, s_v.latent)
    np.testing.assert_array_equal(stepper_b.diverged_at(s_b), s_v.diverged_at)
    for a, b in zip(jax.tree.leaves(stepper_b.pack(full)), jax.tree.leaves(s_b)):
      np.testing.assert_array_equal(a, b)
    kernel = np.asarray(full.params["encoder"]["to_latent"]["kernel"])  # [models, hidden, 3]
    for i, k in enumerate(np.asarray(full.latent)):
      assert not kernel[i][:, k:].any()


def test_a_decoder_list_is_one_axis_each_model_its_own_decoder_by_latent_equal_to_vmap():
  """--decoder=linear,mlp: every (layer, seed, latent) once per decoder, decoder before latent in
  the table; a model's output is exactly its own decoder's (a one-decoder module on that
  decoder's params); the by_latent stepper (a part per latent and decoder, only that decoder
  run) steps every model as the vmap stepper does, to float rounding."""
  import jax
  import jax.numpy as jnp

  from nmas_jax import models
  from nmas_jax.training import sharding, train

  cfg = config.Settings(
    latents=(2, 1),
    seeds=1,
    batch_size=3,
    window=5,
    hidden=6,
    decoder="linear,mlp",
    decoder_hidden=5,
    heldout_neurons=0.25,
    likelihood="gaussian",
    bidirectional=False,
  )
  rng = np.random.default_rng(0)
  ds = data.Dataset(rng.normal(size=(2, 60, 8)).astype(np.float32), ("0", "1"), "array")
  prep = splits.prepare(ds, cfg)
  table = ModelTable.for_sweep(prep, cfg)
  assert table.decoder[:, 0].tolist() == [0, 0, 1, 1] * 2 and table.latent.tolist() == [2, 1] * 4
  assert table.model_latent.tolist()[:4] == [[2, 0], [1, 0], [2, 1], [1, 1]]
  mesh = sharding.make_mesh("auto", devices=jax.devices()[:1])
  (stepper_v, s_v, m_v), (stepper_b, s_b, m_b) = _two_steps_each(prep, cfg, mesh)
  np.testing.assert_allclose(m_b["train/loss"], m_v["train/loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s_b), jax.tree.leaves(stepper_b.pack(s_v))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  union = models.make_model(cfg, 8)
  x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  for i in (1, 2):  # latent 1 with the linear decoder, latent 2 with the mlp decoder
    params = jax.tree.map(lambda a: a[i], s_v.params)
    kind = cfg.decoders[table.decoder[i, 0]]
    alone = union.clone(decoder=kind)
    own = {**params, "decoder_net": params["decoder_net"][kind]}
    y, _ = train.predict(params, s_v.latent[i], x, model=union)
    y_alone, _ = train.predict(own, table.latent[i], x, model=alone)
    np.testing.assert_allclose(y, y_alone, rtol=1e-6, atol=1e-6)  # two programs


@pytest.mark.parametrize("unrolled", [False, True])
def test_by_latent_count_models_on_their_own_neurons_equal_one_vmap(unrolled, monkeypatch):
  """--neuron_counts on by_latent: each count model runs cut to its own inputs and outputs
  (`models.narrow_neurons`), and still steps exactly as the masked padded vmap does, with its
  groups (seeds) vmapped or, as for large layers, each model its own computation; the parts
  are count major, latent minor (then group)."""
  import jax

  monkeypatch.setattr(by_latent, "UNROLL_MIN_NEURONS", 1 if unrolled else 10**9)

  from nmas_jax.training import sharding

  cfg = config.Settings(
    latents=(2, 1),
    seeds=2,
    batch_size=3,
    window=5,
    hidden=6,
    decoder="linear",
    heldout_neurons=0.25,
    likelihood="gaussian",
    bidirectional=False,
    dropout=0.0,
    neuron_counts=(3,),
  )
  rng = np.random.default_rng(0)
  ds = data.Dataset(rng.normal(size=(1, 60, 12)).astype(np.float32), ("0",), "array")
  mesh = sharding.make_mesh("auto", devices=jax.devices()[:1])
  prep = splits.prepare(ds, cfg)
  (_, s_v, m_v), (stepper_b, s_b, m_b) = _two_steps_each(prep, cfg, mesh)
  assert stepper_b.unrolled == unrolled
  if unrolled:  # (all, 3 neurons) x 2 seeds x 2 latents, one model each
    assert stepper_b.narrowed == 2 and len(s_b) == 2 * 2 * 2
    assert s_b[3].params["encoder"]["to_latent"]["kernel"].shape == (6, 1)  # [H, k]
  else:  # (all, 3 neurons) x 2 latents, [seeds] each
    assert stepper_b.narrowed == 1 and len(s_b) == 2 * 2
    assert s_b[3].params["encoder"]["to_latent"]["kernel"].shape == (2, 6, 1)  # [seeds, H, k]
  np.testing.assert_allclose(m_b["train/loss"], m_v["train/loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s_b), jax.tree.leaves(stepper_b.pack(s_v))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(stepper_b.unpack(s_b).latent, s_v.latent)


def test_by_latent_lfads_equals_one_vmap():
  """LFADS (coordinated dropout, held-out neurons, the learning rate halved every step) by_latent,
  each factor size at its own width, steps every model exactly as the padded vmap does."""
  import jax

  from nmas_jax.training import sharding

  cfg = config.Settings(
    model="lfads",
    latents=(2, 1),
    seeds=2,
    batch_size=3,
    window=5,
    gen_dim=6,
    ic_enc_dim=5,
    co_dim=0,
    cd_rate=0.3,
    lr_half_life=1,
    heldout_neurons=0.25,
    likelihood="poisson",
    dropout=0.2,
  )
  rng = np.random.default_rng(0)
  ds = data.Dataset(
    rng.poisson(1.0, size=(1, 60, 8)).astype(np.float32), ("0",), "array", counts=True
  )
  mesh = sharding.make_mesh("auto", devices=jax.devices()[:1])
  prep = splits.prepare(ds, cfg)
  (_, s_v, m_v), (stepper_b, s_b, m_b) = _two_steps_each(prep, cfg, mesh)
  assert s_b[1].params["readout"]["kernel"].shape == (2, 1, 8)  # [seeds, factors 1, neurons]
  np.testing.assert_allclose(m_b["train/loss"], m_v["train/loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s_b), jax.tree.leaves(stepper_b.pack(s_v))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_by_latent_batching_refuses_a_padded_models_axis():
  table = ModelTable.build(1, (1, 2, 3), 1).padded(4)
  with pytest.raises(UserError, match="--batching=by_latent needs every model on one device"):
    by_latent.latent_buckets(table)
  with pytest.raises(
    UserError, match="unknown --batching='fast': choose one of auto, vmap, by_latent"
  ):
    from nmas_jax.training import sharding

    stepper.resolve_batching("fast", sharding.make_mesh("auto"))


def test_stop_rule_cuts_then_stops_on_a_plateau_relative_to_the_groups_gain():
  """`Selection.update` with `StopRule(tolerance=0.01, patience=2, cuts=1)`, evaluations every
  10 steps, in two groups whose best gains over the null (1 - best loss) are 0.5 and about 0.04,
  so a model plateaus when its best loss fell by at most 0.005 (group 0) or about 0.0004
  (group 1) over 2 evaluations. A plateau first cuts the learning rate (at step 30 here), the
  next one, judged on 2 evaluations after the cut, stops the model (at step 50):
  - flat models, and one whose loss is never finite, are cut at 30 and stopped at 50;
  - falling 0.004 per evaluation: trains on in group 0 (0.008 > 0.005);
  - falling 0.002 per evaluation: stopped in group 0 (0.004 <= 0.005), trains on in group 1;
  - falling 0.0001 per evaluation: stopped in group 1;
  - a stopped model's later, better loss is not recorded;
  - a round trip through the checkpoint's JSON after 4 evaluations changes no decision."""
  e = np.arange(1, 9)[:, None]  # evaluations 1..8 at steps 10..80
  null = np.ones(8)
  loss = np.concatenate(
    [
      np.broadcast_to(0.5, (8, 1)),  # 0: flat, group 0 (its gain 0.5 is the group's)
      0.6 - 0.004 * e,  # 1: steady, group 0
      0.6 - 0.002 * e,  # 2: slow, group 0
      np.broadcast_to(np.nan, (8, 1)),  # 3: never finite, group 0
      0.99 - 0.004 * e,  # 4: steady, group 1 (gain up to 0.04)
      0.99 - 0.002 * e,  # 5: slow, group 1
      np.broadcast_to(0.96, (8, 1)),  # 6: flat, group 1 (gain 0.04 sets nothing smaller)
      0.99 - 0.0001 * e,  # 7: very slow, group 1
    ],
    axis=1,
  )
  loss[5:, 0] = 0.1  # the flat model improves after it stopped: not recorded
  group = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  rule = selection.StopRule(tolerance=0.01, patience=2, cuts=1, factor=0.3)
  sel = selection.Selection.fresh(8)
  sel.null = null
  cuts = []
  for i in range(8):
    if i == 4:  # resume from the checkpoint's JSON mid-run
      sel = selection.Selection.from_json(sel.real(8).to_json(), 8)
    _, cut = sel.update(10 * (i + 1), loss[i], group, rule)
    cuts.append(cut)
  cut_at = [10 * (np.flatnonzero(c)[0] + 1) if c.any() else 0 for c in np.array(cuts).T]
  np.testing.assert_array_equal(cut_at, [30, 0, 30, 30, 0, 0, 30, 30])
  np.testing.assert_array_equal(sel.stopped_at, [50, 0, 50, 50, 0, 0, 50, 50])
  np.testing.assert_array_equal(sel.converged(), sel.stopped_at > 0)
  assert sel.score[0] == 0.5 and sel.step[0] == 10  # nothing after the stop counts
  np.testing.assert_array_equal(sel.cuts, [1, 0, 1, 1, 0, 0, 1, 1])


def test_stop_rule_holds_the_latent_just_below_the_answer_while_it_is_near_the_bar():
  """`StopRule(patience=2, cuts=1)` with the rule's bar at 95% and holds within 5% below it;
  null loss 1, so a model's gain is 1 - its loss; two seeds per latent, evaluations every 10:
  - group 0, flat gains 0.5 (k=8), 0.49 (k=4: 98%, the answer), 0.465 (k=2: 93%): k=2 is held
    (never cut nor stopped) while k=4 and k=8 are cut at 30 and stopped at 50;
  - group 1, the same but k=2 at 0.4 (80%, not near the bar): every model stopped at 50;
  - group 2, k=2 flat at 0.465 and k=4 improving by 0.01 per evaluation: k=2 is the answer
    until k=4 reaches 0.49 at step 70 (k=2 then at 94.9%); k=2, stopped at 50, restarts then
    (stopped_at back to 0, its plateau counted from 70);
  - a round trip through the checkpoint's JSON after 4 evaluations changes no decision."""
  e = np.arange(1, 9)[:, None]
  flat = lambda v: np.broadcast_to(v, (8, 2))
  loss = np.concatenate(
    [flat(0.535), flat(0.51), flat(0.5)]
    + [flat(0.6), flat(0.51), flat(0.5)]
    + [flat(0.535), np.broadcast_to(0.58 - 0.01 * e, (8, 2))],
    axis=1,
  )
  group = np.repeat([0, 1, 2], [6, 6, 4])
  latent = np.array([2, 2, 4, 4, 8, 8] * 2 + [2, 2, 4, 4])
  rule = selection.StopRule(tolerance=0.01, patience=2, cuts=1, factor=0.3)
  sel = selection.Selection.fresh(16)
  sel.null = np.ones(16)
  cut_at = np.zeros(16, int)
  for i in range(8):
    if i == 4:
      sel = selection.Selection.from_json(sel.real(16).to_json(), 16)
    _, cut = sel.update(10 * (i + 1), loss[i], group, rule, latent)
    cut_at = np.where(cut & (cut_at == 0), 10 * (i + 1), cut_at)
  np.testing.assert_array_equal(cut_at[:6], [0, 0, 30, 30, 30, 30])
  np.testing.assert_array_equal(sel.stopped_at[:12], [0, 0] + [50] * 10)
  np.testing.assert_array_equal(sel.stopped_at[12:14], [0, 0])
  np.testing.assert_array_equal(sel.since[12:14], [70, 70])


def test_unconverged_advice_names_the_count_and_the_rerun():

  r = {"steps": 400, "models": [{"converged": True}, {"converged": False}, {"converged": False}]}
  assert tables.unconverged_advice(r) == (
    "2 of 3 models were stopped by the --steps=400 cap before they converged (converged: false); "
    "smaller latents often train slower, so the estimate can come out too large. Rerun the same "
    "command with a larger --steps (e.g. --steps=800): the workdir resumes from its last "
    "checkpoint and trains only the models that had not converged."
  )
  assert tables.unconverged_advice({"steps": 400, "models": [{"converged": True}]}) is None


def test_answer_lines_state_the_manifold_and_linear_dimensions_and_their_meaning():
  r = {
    "layers": ["0", "1", "2"],
    "optimal_latent_by_decoder": {"mlp": {"0": 25, "1": 25, "2": 50}},
    "optimal_latent_interval_by_decoder": {"mlp": {"0": [25, 25], "1": [25, 50], "2": [50, 50]}},
    "baseline_optimal_latent": {
      "pca": {"0": 50, "1": 25, "2": 50},
      "fa": {"0": 75, "1": 50, "2": 50},
    },
    "true_latent": {"0": 14, "1": 20, "2": 36},
  }
  assert tables.answer_lines(r) == [
    "layer 0: manifold dimension 25 (5-95% 25-25, mlp decoder); linear dimension 50 by PCA, "
    "75 by FA: the linear methods need more dimensions, so the activity lies on a curved manifold "
    "(true dimension 14).",
    "layer 1: manifold dimension 25 (5-95% 25-50, mlp decoder); linear dimension 25 by PCA, "
    "50 by FA: FA needs more dimensions (the others as many at this grid's resolution), a sign "
    "of a curved manifold (true dimension 20).",
    "layer 2: manifold dimension 50 (5-95% 50-50, mlp decoder); linear dimension 50 by PCA, "
    "50 by FA: they agree at this grid's resolution, so a flat (linear) subspace describes the "
    "activity as well as a curved manifold (true dimension 36).",
  ]
  r["optimal_latent_by_decoder"] = {"linear": r["optimal_latent_by_decoder"]["mlp"]}
  r["optimal_latent_interval_by_decoder"] = {"linear": {"0": [25, 25]}}
  assert tables.answer_lines(r)[0] == (
    "layer 0: linear dimension 25 (5-95% 25-25, linear decoder); 50 by PCA, 75 by FA (true 14); "
    "sweep --decoder=mlp for the manifold dimension."
  )
  # Both decoders (the linear one's with its interval), and a smaller latent near the bar.
  r["optimal_latent_by_decoder"] = {"mlp": {"0": 25}, "linear": {"0": 50}}
  r["optimal_latent_interval_by_decoder"] = {"mlp": {"0": [25, 25]}, "linear": {"0": [50, 75]}}
  r.update(
    decoder="mlp,linear",
    optimal_latent={"0": 25},
    dimension={
      "gain_fraction": 0.95,
      "layers": {"0": {"latents": [10, 25, 50], "gain_fraction": [0.92, 0.99, 1.0]}},
    },
  )
  assert tables.answer_lines(r)[0] == (
    "layer 0: manifold dimension 25 (5-95% 25-25, mlp decoder); linear dimension 50 (5-95% "
    "50-75) by the linear decoder, 50 by PCA, 75 by FA: the linear methods need more dimensions, "
    "so the activity lies on a curved manifold (true dimension 14). With the mlp decoder, latent "
    "10 reached 92% of the best gain (the bar is 95%): a larger --steps could still choose it."
  )
  r["models"] = [
    {"layer": "0", "latent": 10, "decoder": "mlp", "stopped_at_step": s} for s in (2900, 3000)
  ] + [{"layer": "0", "latent": 10, "decoder": "linear", "stopped_at_step": 400}]
  assert tables.answer_lines(r)[0].endswith(
    "latent 10 reached 92% of the best gain (the bar is 95%); its models trained on to step "
    "3000 without reaching it: a larger --steps could still choose it."
  )
