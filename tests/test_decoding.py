"""Layer decoding from a shared model's latents."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from nmas_jax import config
from nmas_jax.data import batches, splits, synthetic
from nmas_jax.evaluation import decoding
from nmas_jax.training import sweep


def test_logistic_regression_separates_separable_classes():
  rng = np.random.default_rng(0)
  centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
  y = np.repeat(np.arange(3), 40)
  f = centers[y] + 0.5 * rng.standard_normal((120, 2))
  predict = decoding.fit_logistic(jnp.asarray(f), jnp.asarray(y), 3)
  assert float(jnp.mean(predict(jnp.asarray(f)) == y)) > 0.97


def test_mixed_layer_batches_draw_from_every_layer():
  x = jnp.broadcast_to(jnp.arange(4.0)[:, None, None], (4, 50, 2))
  b = batches.sample_batches(
    x,
    jnp.zeros(2, jnp.int32),
    jnp.array([0, 1]),
    jnp.int32(3),
    t_train=40,
    window=5,
    batch_size=64,
    mix_layers=True,
  )
  layers = np.asarray(b[..., 0, 0])
  assert set(np.unique(layers)) == {0.0, 1.0, 2.0, 3.0}
  assert np.all(b[..., :, :] == b[..., :1, :1])  # one layer per window


def test_shared_model_decodes_distinct_layers_above_chance():
  ds = synthetic.make_synthetic(true_latents=(2, 2, 2), neurons=12, time=800, seed=3)
  # Make the layers distinguishable by their covariance: scale two of them.
  ds = dataclasses.replace(
    ds, x_LTN=ds.x_LTN * np.array([1.0, 2.5, 0.4], np.float32)[:, None, None]
  )
  cfg = config.Settings(
    latents=(1, 4),
    hidden=12,
    window=20,
    batch_size=16,
    steps=150,
    bidirectional=False,
    learning_rate=1e-2,
    log_every=150,
    seeds=2,
  )
  prep = splits.prepare(ds, cfg, shared=True)
  out = sweep.run_sweep(prep, cfg, log=lambda s: None)
  assert len(out.table) == 4 and set(out.table.layer) == {0}
  acc = decoding.layer_accuracy(prep, cfg, out)
  assert acc["chance"] == 1 / 3 and acc["latents"] == [1, 4]
  assert all(len(v) == 2 for v in acc["accuracy"])
  assert np.mean(acc["accuracy"][1]) > 0.8
