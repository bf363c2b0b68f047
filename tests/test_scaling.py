"""The --neuron_counts axis: nested subsets with fixed held-out targets, models that never depend on
neurons outside their subset, the all-neuron models unchanged by the axis, and `scaling`."""

import dataclasses

import jax
import numpy as np
import pytest

from nmas_jax import config
from nmas_jax.data import splits, synthetic
from nmas_jax.errors import UserError
from nmas_jax.evaluation import estimates, evaluate
from nmas_jax.training import sweep


def _data(seed=0, time=400):
  return synthetic.make_linear_gaussian(true_latents=(2, 3), neurons=30, time=time, seed=seed)


def test_count_subsets_are_nested_and_keep_each_seeds_heldout_neurons():
  cfg = config.Settings(latents=(2,), seeds=2, neuron_counts=(4, 10, 20))
  prep = splits.prepare(_data(), cfg, data_seed=5)
  for s in range(2):
    for l in range(2):
      held = prep.heldout_SLN[s, l]
      ones = lambda c: (np.array([l]), np.array([s]), np.array([c]))
      inputs = {c: prep.input_mask_MN(*ones(c))[0] > 0 for c in (4, 10, 20, 0)}
      assert [inputs[c].sum() for c in (4, 10, 20, 0)] == [4, 10, 20, (~held).sum()]
      assert (inputs[4] <= inputs[10]).all() and (inputs[10] <= inputs[20]).all()
      assert (inputs[20] <= inputs[0]).all() and not (inputs[0] & held).any()
      for c in (4, 10, 20):  # the loss covers the subset and the same held-out targets
        np.testing.assert_array_equal(prep.target_mask_MN(*ones(c))[0] > 0, inputs[c] | held)
  # Another --data_seed draws other subsets; the held-out neurons do not move.
  other = splits.prepare(_data(), cfg, data_seed=6)
  np.testing.assert_array_equal(other.heldout_SLN, prep.heldout_SLN)
  assert (other.count_rank_SLN != prep.count_rank_SLN).any()


def test_a_count_not_below_the_held_in_neurons_is_refused():
  cfg = config.Settings(latents=(2,), seeds=1, neuron_counts=(10, 24))
  with pytest.raises(UserError) as e:
    splits.prepare(_data(), cfg)
  assert str(e.value) == (
    "--neuron_counts=10,24 asks for 24 neurons, but each layer has 24 held in: "
    "give counts below 24 (all held-in neurons are always swept)"
  )


def _run(ds, counts, batching):
  cfg = config.Settings(
    latents=(1, 3),
    seeds=1,
    neuron_counts=counts,
    steps=12,
    log_every=12,
    hidden=8,
    window=10,
    batch_size=4,
    bootstrap=20,
  )
  prep = splits.prepare(ds, cfg)
  return prep, cfg, sweep.run_sweep(prep, cfg, batching=batching, log=lambda s: None)


def test_count_models_ignore_neurons_outside_their_subset():
  # by_latent here (named: at these sizes auto is vmap); the vmap step reads the same masks
  # (next test).
  batching = "by_latent"
  ds = _data()
  prep, cfg, out = _run(ds, (6,), batching)
  # Replace every neuron that no count-6 model sees or predicts by noise: those models train
  # exactly as before; the all-neuron models see it and change.
  outside = np.stack(
    [(prep.target_mask_MN(np.array([l]), np.array([0]), np.array([6]))[0] == 0) for l in range(2)]
  )
  noise = np.random.default_rng(1).standard_normal(ds.x_LTN.shape).astype(np.float32)
  x = np.where(outside[:, None, :], noise, ds.x_LTN)
  _, _, out2 = _run(dataclasses.replace(ds, x_LTN=x), (6,), batching)
  leaves = lambda o, sel: [np.asarray(a)[sel] for a in jax.tree.leaves(o.state.params)]
  counted, full = out.table.count == 6, out.table.count == 0
  for a, b in zip(leaves(out, counted), leaves(out2, counted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(leaves(out, full), leaves(out2, full)))


def test_all_neuron_models_are_the_same_with_and_without_the_count_axis():
  ds = _data()
  prep, cfg, with_counts = _run(ds, (6, 12), "vmap")
  _, _, without = _run(ds, (), "vmap")
  full = with_counts.table.count == 0
  assert full.sum() == len(without.table) == 4
  for a, b in zip(jax.tree.leaves(with_counts.state.params), jax.tree.leaves(without.state.params)):
    np.testing.assert_allclose(np.asarray(a)[full], np.asarray(b), rtol=1e-5, atol=1e-6)
  ev = evaluate.evaluate_sweep(prep, cfg, with_counts, log=lambda s: None)
  sc = ev["scaling"]
  assert sc["counts"] == [6, 12, 24]
  for layer in ("0", "1"):
    row = sc["layers"][layer]
    assert len(row["chosen"]) == len(row["interval"]) == len(row["pca"]) == len(row["fa"]) == 3
    assert row["chosen"][-1] == ev["optimal_latent"][layer]  # the last count is the main sweep
    assert row["saturates"] == (row["chosen"][-1] == row["chosen"][-2])


def test_log_slope():
  assert estimates.log_slope([10, 100, 1000], [2, 20, 200]) == 1.0
  assert estimates.log_slope([10, 100, 1000], [5, 5, 5]) == 0.0
  assert estimates.log_slope([10, 100], [0, 5]) is None
