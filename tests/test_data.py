"""Loaders, synthetic data, preprocessing, splits and batches."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from nmas_jax import config, data
from nmas_jax.data import batches, loaders, lorenz, splits, synthetic
from nmas_jax.errors import UserError
from nmas_jax.evaluation import dimension

COUNTS = {30.0: 7, 0.0: 4, 60.0: 9, 90.0: 5, 120.5: 6}  # unequal planes, unsorted
TIME = 21


def _stringer_dict(seed=0):
  rng = np.random.default_rng(seed)
  z = np.concatenate([np.full(c, p) for p, c in COUNTS.items()])
  n = len(z)
  xyz = np.stack([rng.uniform(size=n), rng.uniform(size=n), z])
  sresp = rng.gamma(2.0, 1.0, size=(n, TIME)) + 0.1
  return {
    "sresp": sresp,
    "xyz": xyz,
    "run": np.zeros(TIME),
    "pupilArea": np.zeros(TIME),
    "pupilCOM": np.zeros((TIME, 2)),
    "beh_svd_time": np.zeros((TIME, 3)),
    "beh_svd_mask": np.zeros((3, 4, 4)),
    "stat": np.array([{}] * n, dtype=object),
  }


def _save(tmp_path, obj, name="stringer.npy"):
  path = tmp_path / name
  np.save(path, obj, allow_pickle=True)
  return str(path)


def test_stringer_layers_subsample_and_bin(tmp_path):
  raw = _stringer_dict()
  ds = loaders.load_stringer(_save(tmp_path, raw), seed=3)
  assert ds.layer_names == ("0", "30", "60", "90", "120.5")
  assert ds.x_LTN.shape == (5, TIME // 2, 4)  # smallest plane has 4 neurons; 21 bins -> 10
  assert not ds.counts  # gamma-distributed activity is not spike counts
  for i, name in enumerate(ds.layer_names):
    idx = np.array(ds.meta["neuron_indices"][name])
    assert len(set(idx)) == 4
    assert np.all(raw["xyz"][2, idx] == float(name))
    x = raw["sresp"][idx].T
    np.testing.assert_allclose(ds.x_LTN[i], (x[0:20:2] + x[1:20:2]) / 2, rtol=1e-6)
  # The mean over ALL neurons of the recording, binned, for --normalize=mean_per_bin_all.
  mean_T = raw["sresp"].mean(axis=0)
  np.testing.assert_allclose(ds.population_mean_T, (mean_T[0:20:2] + mean_T[1:20:2]) / 2)


def test_normalisations_use_the_training_block_and_the_held_in_neurons(tmp_path):
  """zscore: training-block statistics; mean_per_bin: the layer's neurons no seed holds out;
  mean_per_bin_all (the original NMAs'): the mean of every neuron of the recording."""
  raw = _stringer_dict()
  ds = loaders.load_stringer(_save(tmp_path, raw), neurons_per_layer=3, bin_size=1)
  cfg = config.Settings(latents=(1,), window=2, seeds=2, heldout_neurons=0.34, normalize="zscore")
  prep = splits.prepare(ds, cfg)
  t = prep.t_train
  np.testing.assert_allclose(prep.dataset.x_LTN[:, :t].mean(axis=1), 0, atol=1e-5)
  np.testing.assert_allclose(prep.dataset.x_LTN[:, :t].std(axis=1), 1, rtol=1e-4)
  assert (
    np.abs(prep.dataset.x_LTN[:, t:].mean(axis=1)).max() > 1e-3
  )  # not re-centred on later blocks
  prep = splits.prepare(ds, dataclasses.replace(cfg, normalize="mean_per_bin"))
  held_in = ~prep.heldout_SLN.any(axis=0)  # [layers, neurons]
  for l in range(ds.num_layers):
    mean_T = ds.x_LTN[l][:, held_in[l]].mean(axis=1)
    np.testing.assert_allclose(prep.dataset.x_LTN[l], ds.x_LTN[l] / mean_T[:, None], rtol=1e-5)
  prep = splits.prepare(ds, dataclasses.replace(cfg, normalize="mean_per_bin_all"))
  all_mean_T = raw["sresp"].mean(axis=0)
  np.testing.assert_allclose(prep.dataset.x_LTN, ds.x_LTN / all_mean_T[None, :, None], rtol=1e-5)


def test_stringer_options(tmp_path):
  path = _save(tmp_path, _stringer_dict())
  ds = loaders.load_stringer(path, neurons_per_layer=3, bin_size=1)
  assert ds.x_LTN.shape == (5, TIME, 3)
  a = loaders.load_stringer(path, seed=1, bin_size=1)
  b = loaders.load_stringer(path, seed=1, bin_size=1)
  np.testing.assert_array_equal(a.x_LTN, b.x_LTN)
  raw = _stringer_dict()
  idx = a.meta["neuron_indices"]["60"]
  np.testing.assert_allclose(a.x_LTN[2], raw["sresp"][idx].T, rtol=1e-6)


@pytest.mark.parametrize(
  "mutate, message",
  [
    (lambda d: np.arange(3), "does not hold a dict (got ndarray)"),
    (lambda d: {k: v for k, v in d.items() if k != "xyz"}, "is missing key(s) 'xyz'"),
    (lambda d: {**d, "xyz": d["xyz"][:, :-1]}, "sresp has 31 neurons but xyz has 30"),
    (
      lambda d: {**d, "sresp": np.where(np.arange(TIME) == 5, np.nan, d["sresp"])},
      "sresp [neurons, time] has 31 non-finite values (NaN or Inf); the first is at index (0, 5)",
    ),
    (lambda d: {**d, "sresp": d["sresp"].astype(str)}, "sresp has dtype <U"),
  ],
)
def test_stringer_bad_input(tmp_path, mutate, message):
  path = _save(tmp_path, mutate(_stringer_dict()))
  with pytest.raises(UserError) as e:
    loaders.load_stringer(path)
  assert message in str(e.value)
  assert "\n" not in str(e.value)


def test_missing_and_unreadable_files(tmp_path):
  with pytest.raises(UserError, match="data file not found: .*nope.npy"):
    loaders.load_stringer(str(tmp_path / "nope.npy"))
  bad = tmp_path / "garbage.npy"
  bad.write_bytes(b"not a numpy file")
  with pytest.raises(UserError, match="cannot read .*garbage.npy"):
    loaders.load_stringer(str(bad))
  with pytest.raises(UserError, match="neurons_per_layer=5: lower it"):
    loaders.load_stringer(_save(tmp_path, _stringer_dict()), neurons_per_layer=5)


def test_array_loader_shapes_and_keys(tmp_path):
  x = np.random.default_rng(0).uniform(0.5, 1.5, size=(40, 6))
  np.save(tmp_path / "a.npy", x)
  ds = loaders.load_array(str(tmp_path / "a.npy"), bin_size=1)
  assert ds.layer_names == ("0",) and not ds.counts
  np.testing.assert_allclose(ds.x_LTN[0], x, rtol=1e-6)
  ds = loaders.load_array(str(tmp_path / "a.npy"))  # default bin 2: adjacent bins averaged
  np.testing.assert_allclose(ds.x_LTN[0], (x[0::2] + x[1::2]) / 2, rtol=1e-6)
  x3 = np.stack([x, 2 * x, 3 * x])
  np.savez(tmp_path / "b.npz", act=x3, other=np.zeros(3))
  ds = loaders.load_array(str(tmp_path / "b.npz"), key="act", bin_size=1)
  assert ds.layer_names == ("0", "1", "2")
  np.testing.assert_allclose(ds.x_LTN, x3, rtol=1e-6)
  # --data_key may be omitted when exactly one array is [time, neurons] or [layers, time, neurons].
  np.testing.assert_array_equal(
    loaders.load_array(str(tmp_path / "b.npz"), bin_size=1).x_LTN, ds.x_LTN
  )
  np.savez(tmp_path / "two.npz", a=x, b=x)
  with pytest.raises(UserError, match=r"holds several arrays \(a, b\): choose one with --data_key"):
    loaders.load_array(str(tmp_path / "two.npz"))
  with pytest.raises(UserError, match="--data_key='nope' is not in"):
    loaders.load_array(str(tmp_path / "b.npz"), key="nope")
  np.save(tmp_path / "c.npy", np.zeros((2, 2, 2, 2)))
  with pytest.raises(UserError, match=r"got shape \(2, 2, 2, 2\)"):
    loaders.load_array(str(tmp_path / "c.npy"))
  np.save(tmp_path / "d.npy", np.array([{}], dtype=object), allow_pickle=True)
  with pytest.raises(UserError, match="holds pickled objects"):
    loaders.load_array(str(tmp_path / "d.npy"))
  (tmp_path / "e.npz").write_bytes(b"not an archive at all")
  with pytest.raises(UserError, match=r"e.npz is not a valid .npy or .npz file"):
    loaders.load_array(str(tmp_path / "e.npz"))
  (tmp_path / "f.npz").write_bytes((tmp_path / "b.npz").read_bytes()[:200])  # truncated archive
  with pytest.raises(UserError, match=r"f.npz is not a valid .npz file"):
    loaders.load_array(str(tmp_path / "f.npz"))


def test_counts_are_detected_on_the_raw_array_and_summed_when_binned(tmp_path):
  counts = np.random.default_rng(0).poisson(0.3, size=(40, 5))
  np.save(tmp_path / "spikes.npy", counts)
  ds = loaders.load_array(str(tmp_path / "spikes.npy"))
  assert ds.counts
  np.testing.assert_array_equal(ds.x_LTN[0], counts[0::2] + counts[1::2])
  assert splits.resolve_likelihood("auto", ds) == "poisson"
  prep = splits.prepare(ds, config.Settings(latents=(1,), window=2))
  np.testing.assert_array_equal(prep.dataset.x_LTN, ds.x_LTN)  # counts are not normalised
  assert splits.resolve_likelihood("auto", data.as_dataset(counts - 0.5)) == "gaussian"


def test_mean_per_bin_refuses_bins_without_a_positive_mean():
  x = np.random.default_rng(0).normal(size=(60, 6))
  x -= x.mean(axis=1, keepdims=True) + 0.1  # dF/F-like: a negative population mean in every bin
  with pytest.raises(
    UserError,
    match="--normalize=mean_per_bin divides each time bin by its "
    "held-in neurons' mean, but 60 bins have a mean <= 0",
  ):
    splits.prepare(
      data.as_dataset(x),
      config.Settings(latents=(1,), window=2, heldout_neurons=0, normalize="mean_per_bin"),
    )


def test_constant_neurons_are_dropped_and_a_constant_layer_is_refused():
  x = np.random.default_rng(0).normal(size=(2, 100, 6))
  x[0, :, 2] = 3.0
  x[1, :, 4] = 1.0
  prep = splits.prepare(data.as_dataset(x), config.Settings(latents=(1,), window=2, seeds=1))
  assert prep.dropped == {"0": [2], "1": [4]} and prep.num_neurons == 5
  assert [n for n in prep.notes if "constant" in n] == [
    "layer 0: dropped 1 neuron(s) constant on the training block (indices 2)",
    "layer 1: dropped 1 neuron(s) constant on the training block (indices 4)",
  ]
  np.testing.assert_array_equal(prep.neuron_index_LN, [[0, 1, 3, 4, 5], [0, 1, 2, 3, 5]])
  x[1] = 7.0
  with pytest.raises(UserError, match="layer 1 has no variance on the training block"):
    splits.prepare(data.as_dataset(x), config.Settings(latents=(1,), window=2, seeds=1))


def test_synthetic_is_deterministic_with_the_stated_dimension():
  a = synthetic.make_synthetic(true_latents=(3, 8), neurons=40, time=500, seed=1)
  b = synthetic.make_synthetic(true_latents=(3, 8), neurons=40, time=500, seed=1)
  np.testing.assert_array_equal(a.x_LTN, b.x_LTN)
  assert a.true_latent == {"0": 3, "1": 8}
  for i, d in enumerate((3, 8)):
    x = a.x_LTN[i] - a.x_LTN[i].mean(axis=0)
    ev = np.linalg.eigvalsh(x.T @ x / len(x))[::-1]
    # d signal eigenvalues stand far above the noise floor (noise variance 0.25).
    assert ev[d - 1] > 4 * 0.25 * 1.6 and ev[d] < 0.25 * 2.0


def test_batches_are_a_pure_function_of_seed_and_step():
  x = jnp.arange(2 * 30 * 3, dtype=jnp.float32).reshape(2, 30, 3)
  kw = dict(t_train=24, window=5, batch_size=4)
  layer, seed = jnp.array([0, 1, 1]), jnp.array([0, 0, 1])
  a = batches.sample_batches(x, layer, seed, jnp.int32(7), **kw)
  b = batches.sample_batches(x, layer, seed, jnp.int32(7), **kw)
  c = batches.sample_batches(x, layer, seed, jnp.int32(8), **kw)
  assert a.shape == (3, 4, 5, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Same seed -> same windows, whatever the layer; windows stay inside the training block.
  np.testing.assert_array_equal(a[0] + 90, a[1])
  t = np.asarray(a[..., 0]) % 90 // 3
  assert t.max() < 24 and np.all(np.diff(t, axis=-1) == 1)


def test_windows_tile_a_block():
  x = np.arange(2 * 23, dtype=np.float32).reshape(2, 23, 1)
  v = batches.windows(x, 10, 23, window=4)
  assert v.shape == (2, 3, 4, 1)
  np.testing.assert_array_equal(v[0, :, :, 0].ravel(), np.arange(10, 22))


def test_window_longer_than_a_block():
  with pytest.raises(
    UserError,
    match=r"--window=30 is longer than a block: .* 70 train / 10 "
    r"validation / 20 test; use --window<=10",
  ):
    splits.fit_window(30, 100, 70, 80, default=50, notes=[])
  notes = []  # the default window shrinks to fit a short recording, with a note
  assert splits.fit_window(50, 100, 70, 80, default=50, notes=notes) == 10
  assert notes == [
    "--window=10 instead of the default 50: the data has 100 time bins after "
    "binning, 70 train / 10 validation / 20 test"
  ]


def test_trial_arrays_are_binned_per_trial_and_split_by_whole_trials(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.poisson(1.0, size=(2, 10, 7, 4))  # [layers, trials, time, neurons]; 7 bins: odd
  np.save(tmp_path / "trials.npy", x)
  ds = loaders.load_array(str(tmp_path / "trials.npy"), trials=True, bin_size=2)
  # Each trial binned on its own (its 7th bin dropped), then the trials laid end to end.
  assert ds.trial_length == 3 and ds.num_trials == 10 and ds.counts
  np.testing.assert_array_equal(ds.x_LTN, (x[:, :, 0:6:2] + x[:, :, 1:6:2]).reshape(2, 30, 4))
  np.save(tmp_path / "one.npy", x[0])  # [trials, time, neurons]: one layer
  one = loaders.load_array(str(tmp_path / "one.npy"), trials=True, bin_size=1)
  assert one.x_LTN.shape == (1, 70, 4) and one.trial_length == 7

  prep = splits.prepare(ds, config.Settings(latents=(1,), seeds=1))
  assert (prep.t_train, prep.t_valid, prep.window) == (21, 24, 3)  # 7 / 1 / 2 trials of 3 bins
  assert "--window=3: one whole trial (trial data)" in prep.notes
  # Training windows are whole training trials: they start at trial boundaries.
  b = batches.sample_batches(
    jnp.arange(30.0)[None, :, None],
    jnp.zeros(2, jnp.int32),
    jnp.array([0, 1]),
    jnp.int32(5),
    t_train=21,
    window=3,
    batch_size=64,
    stride=3,
  )
  starts = np.asarray(b[..., 0, 0])
  assert set(starts.ravel()) == {0, 3, 6, 9, 12, 15, 18}
  np.testing.assert_array_equal(
    np.asarray(b[..., 0]) - starts[..., None], np.broadcast_to(np.arange(3), (2, 64, 3))
  )

  with pytest.raises(UserError) as e:
    splits.prepare(ds, config.Settings(latents=(1,), seeds=1, window=5))
  assert str(e.value) == (
    "--window=5, but with trial data a window is a whole trial (3 bins): drop --window"
  )
  np.save(tmp_path / "flat.npy", x[0, 0])
  with pytest.raises(UserError) as e:
    loaders.load_array(str(tmp_path / "flat.npy"), trials=True)
  assert str(e.value) == (
    "with --trials the array must be [trials, time, neurons] or [layers, "
    "trials, time, neurons], got shape (7, 4)"
  )
  with pytest.raises(
    UserError,
    match=r"^--trials describes an array file's layout and needs "
    r"--dataset=array, not --dataset=lorenz \(lorenz_trials is "
    r"trial data already\)$",
  ):
    loaders.load(config.DataSettings(dataset="lorenz", trials=True))
  with pytest.raises(UserError, match=r"^3 trials are too few for a training, validation and test"):
    splits.time_blocks(9, 0.7, 0.1, trial_length=3)


def test_lorenz_trials_keep_their_true_rates_through_preparation():
  ds = lorenz.make_lorenz_trials(trials=40, time=10, neurons=12)
  assert ds.x_LTN.shape == ds.rates_LTN.shape == (1, 400, 12) and ds.trial_length == 10
  assert ds.true_latent == {"0": 3} and ds.counts
  # Counts are Poisson draws of the rates: their means agree within sampling error.
  assert abs(ds.x_LTN.mean() - ds.rates_LTN.mean()) < 4 * np.sqrt(
    ds.rates_LTN.mean() / ds.x_LTN.size
  )
  # Each trial starts from its own initial condition: no two trials' first rates are equal.
  first = ds.rates_LTN[0, ::10]
  assert len({tuple(r) for r in np.round(first, 6)}) == 40
  # As Gaussian data the rates are z-scored with the counts' training-block statistics.
  prep = splits.prepare(ds, config.Settings(latents=(1,), seeds=1, likelihood="gaussian"))
  t = prep.t_train
  mean, std = ds.x_LTN[0, :t].mean(axis=0), ds.x_LTN[0, :t].std(axis=0)
  np.testing.assert_allclose(
    prep.dataset.rates_LTN[0], (ds.rates_LTN[0] - mean) / std, rtol=1e-4, atol=1e-4
  )
  np.testing.assert_array_equal(
    prep.flat("test", rates=True)[0], prep.dataset.rates_LTN[0, prep.t_valid :]
  )
  # A layer subset keeps its rates; the shuffle control shifts rates with their counts.
  ctrl = data.with_shuffle_control(
    lorenz.make_lorenz_trials(trials=40, time=10, neurons=12, layers=2).select_layers(["1"])
  )
  shifted, raw = ctrl.x_LTN[1] - ctrl.rates_LTN[1], ctrl.x_LTN[0] - ctrl.rates_LTN[0]
  np.testing.assert_allclose(np.sort(shifted, axis=0), np.sort(raw, axis=0))
  assert not np.allclose(shifted, raw)


def test_whitened_lorenz_has_the_same_states_with_three_equal_directions():
  # Same seed: the same trajectory, weights and baselines; whitening only changes which linear
  # map of the states drives the log-rates. Both are exactly 3-D; the whitened one's third
  # direction carries a larger share (z-scoring leaves x and y correlated).
  shares, spans = [], []
  for whiten in (False, True):
    log_rate = np.log(
      lorenz.make_lorenz(neurons=30, time=1500, whiten=whiten, seed=1)
      .rates_LTN[0]
      .astype(np.float64)
    )
    u, s, _ = np.linalg.svd(log_rate - log_rate.mean(axis=0), full_matrices=False)
    assert s[3] < 1e-3 * s[0]  # rank 3: linear in the 3-D state
    shares.append(s[2] ** 2 / (s[:3] ** 2).sum())
    spans.append(u[:, :3])
  # The same 3-D subspace of time courses: the principal angles between them are ~0.
  np.testing.assert_allclose(np.linalg.svd(spans[0].T @ spans[1], compute_uv=False), 1.0, atol=1e-4)
  assert shares[1] > 2 * shares[0]


def test_lorenz_trials_are_whitened_so_the_rule_on_the_true_rates_answers_three():
  # The rule applied to the true rates (dimension.oracle_gains: each neuron's Poisson GLM on the
  # top-k principal components of the true log-rates) answers 3 on the default (whitened) trials,
  # on several draws. With each coordinate z-scored instead, the same states answer 2: the third
  # direction then carries under 5% of the gain, which is why lorenz_trials whitens.
  grid = (1, 2, 3, 4)
  for seed in (0, 1):
    for whiten, answer in ((True, 3), (False, 2)):
      ds = lorenz.make_lorenz_trials(trials=200, time=20, neurons=40, whiten=whiten, seed=seed)
      log_rate = np.log(ds.rates_LTN[0].astype(np.float64))
      sv = np.linalg.svd(log_rate - log_rate.mean(axis=0), compute_uv=False)
      assert sv[3] < 1e-3 * sv[0]  # linear in the 3-D state either way
      gain = dimension.oracle_gains(ds.x_LTN[0], ds.rates_LTN[0], grid, counts=True)
      assert dimension.choose(grid, gain) == answer, (seed, whiten, gain / gain.max())


def test_neuron_folds_cover_every_neuron_once_per_seed():
  """--neuron_folds=K: per seed and layer, K disjoint held-out sets whose union is every neuron,
  of sizes differing by at most one; seed 0's folds do not depend on the number of seeds; more
  folds than a layer can split is a one-line error."""
  k, n = 3, 20
  m = splits.heldout_masks(2, 2, n, 0.2, folds=k)  # [seeds * K, layers, neurons]
  assert m.shape == (6, 2, n)
  for s in range(2):
    for l in range(2):
      folds = m[s * k : (s + 1) * k, l]
      np.testing.assert_array_equal(folds.sum(0), np.ones(n))  # each neuron in exactly one fold
      assert set(folds.sum(1)) <= {n // k, n // k + 1}
  assert not np.array_equal(m[0:3], m[3:6])  # the seeds draw their own partitions
  np.testing.assert_array_equal(splits.heldout_masks(1, 2, n, 0.2, folds=k), m[:3])
  with pytest.raises(
    UserError,
    match=r"^--neuron_folds=20 needs more than 20 neurons per layer; "
    r"the layers have 20: use fewer folds$",
  ):
    splits.heldout_masks(1, 1, n, 0.2, folds=20)
