"""Loaders, synthetic data, splits and batches."""

import jax.numpy as jnp
import numpy as np
import pytest

from nmas_jax import data, loaders, splits, synthetic
from nmas_jax.errors import UserError

COUNTS = {30.0: 7, 0.0: 4, 60.0: 9, 90.0: 5, 120.5: 6}  # unequal planes, unsorted
TIME = 21


def _stringer_dict(seed=0):
  rng = np.random.default_rng(seed)
  z = np.concatenate([np.full(c, p) for p, c in COUNTS.items()])
  n = len(z)
  xyz = np.stack([rng.uniform(size=n), rng.uniform(size=n), z])
  sresp = rng.gamma(2.0, 1.0, size=(n, TIME)) + 0.1
  return {"sresp": sresp, "xyz": xyz, "run": np.zeros(TIME), "pupilArea": np.zeros(TIME),
          "pupilCOM": np.zeros((TIME, 2)), "beh_svd_time": np.zeros((TIME, 3)),
          "beh_svd_mask": np.zeros((3, 4, 4)), "stat": np.array([{}] * n, dtype=object)}


def _save(tmp_path, obj, name="stringer.npy"):
  path = tmp_path / name
  np.save(path, obj, allow_pickle=True)
  return str(path)


def test_stringer_layers_subsample_normalise_and_bin(tmp_path):
  raw = _stringer_dict()
  ds = loaders.load_stringer(_save(tmp_path, raw), seed=3)
  assert ds.layer_names == ("0", "30", "60", "90", "120.5")
  assert ds.x_LTN.shape == (5, TIME // 2, 4)  # smallest plane has 4 neurons; 21 bins -> 10
  mean_T = raw["sresp"].mean(axis=0)  # over ALL neurons, before splitting layers
  for i, name in enumerate(ds.layer_names):
    idx = np.array(ds.meta["neuron_indices"][name])
    assert len(set(idx)) == 4
    assert np.all(raw["xyz"][2, idx] == float(name))
    x = raw["sresp"][idx].T / mean_T[:, None]
    expected = (x[0:20:2] + x[1:20:2]) / 2
    np.testing.assert_allclose(ds.x_LTN[i], expected, rtol=1e-6)


def test_stringer_options(tmp_path):
  path = _save(tmp_path, _stringer_dict())
  ds = loaders.load_stringer(path, neurons_per_layer=3, normalize_method="zscore", bin_size=1)
  assert ds.x_LTN.shape == (5, TIME, 3)
  np.testing.assert_allclose(ds.x_LTN.mean(axis=1), 0, atol=1e-5)
  np.testing.assert_allclose(ds.x_LTN.std(axis=1), 1, rtol=1e-4)
  a = loaders.load_stringer(path, seed=1, normalize_method="none", bin_size=1)
  b = loaders.load_stringer(path, seed=1, normalize_method="none", bin_size=1)
  np.testing.assert_array_equal(a.x_LTN, b.x_LTN)
  raw = _stringer_dict()
  idx = a.meta["neuron_indices"]["60"]
  np.testing.assert_allclose(a.x_LTN[2], raw["sresp"][idx].T, rtol=1e-6)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: np.arange(3), "does not hold a dict (got ndarray)"),
    (lambda d: {k: v for k, v in d.items() if k != "xyz"}, "is missing key(s) 'xyz'"),
    (lambda d: {**d, "xyz": d["xyz"][:, :-1]}, "sresp has 31 neurons but xyz has 30"),
    (lambda d: {**d, "sresp": np.where(np.arange(TIME) == 5, np.nan, d["sresp"])},
     "sresp [neurons, time] has 31 non-finite values (NaN or Inf); the first is at index (0, 5)"),
    (lambda d: {**d, "sresp": d["sresp"].astype(str)}, "sresp has dtype <U"),
])
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
  ds = loaders.load_array(str(tmp_path / "a.npy"), normalize_method="none", bin_size=1)
  assert ds.layer_names == ("0",)
  np.testing.assert_allclose(ds.x_LTN[0], x, rtol=1e-6)
  ds = loaders.load_array(str(tmp_path / "a.npy"))  # defaults: mean_per_bin, bin 2
  assert ds.x_LTN.shape == (1, 20, 6)
  x3 = np.stack([x, 2 * x, 3 * x])
  np.savez(tmp_path / "b.npz", act=x3, other=np.zeros(3))
  ds = loaders.load_array(str(tmp_path / "b.npz"), key="act", normalize_method="none", bin_size=1)
  assert ds.layer_names == ("0", "1", "2")
  np.testing.assert_allclose(ds.x_LTN, x3, rtol=1e-6)
  with pytest.raises(UserError, match=r"holds several arrays \(act, other\): choose one with --data_key"):
    loaders.load_array(str(tmp_path / "b.npz"))
  with pytest.raises(UserError, match="--data_key='nope' is not in"):
    loaders.load_array(str(tmp_path / "b.npz"), key="nope")
  np.save(tmp_path / "c.npy", np.zeros((2, 2, 2, 2)))
  with pytest.raises(UserError, match=r"got shape \(2, 2, 2, 2\)"):
    loaders.load_array(str(tmp_path / "c.npy"))
  np.save(tmp_path / "d.npy", np.array([{}], dtype=object), allow_pickle=True)
  with pytest.raises(UserError, match="holds pickled objects"):
    loaders.load_array(str(tmp_path / "d.npy"))
  np.save(tmp_path / "z.npy", x - x.mean())
  with pytest.raises(UserError, match="mean_per_bin needs a positive population mean"):
    loaders.load_array(str(tmp_path / "z.npy"))


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
  a = splits.sample_batches(x, layer, seed, jnp.int32(7), **kw)
  b = splits.sample_batches(x, layer, seed, jnp.int32(7), **kw)
  c = splits.sample_batches(x, layer, seed, jnp.int32(8), **kw)
  assert a.shape == (3, 4, 5, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Same seed -> same windows, whatever the layer; windows stay inside the training block.
  np.testing.assert_array_equal(a[0] + 90, a[1])
  t = np.asarray(a[..., 0]) % 90 // 3
  assert t.max() < 24 and np.all(np.diff(t, axis=-1) == 1)


def test_validation_windows_tile_the_held_out_block():
  x = np.arange(2 * 23, dtype=np.float32).reshape(2, 23, 1)
  v = splits.valid_windows(x, t_train=10, window=4)
  assert v.shape == (2, 3, 4, 1)
  np.testing.assert_array_equal(v[0, :, :, 0].ravel(), np.arange(10, 22))


def test_window_longer_than_a_split():
  with pytest.raises(UserError, match=r"--window=30 is longer than a split: .* 80 train / 20 validation; use --window<=20"):
    splits.check_window(100, 80, 30)
