"""Shared test settings: strict shapes, CPU, small sizes."""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# Start JAX's backend now: a test that imports a CLI module (which tunes XLA_FLAGS at import,
# sharding.tune_cpu_flags) then changes neither this process's devices nor its children's.
jax.devices()


@pytest.fixture(scope="module")
def synthetic_npy(tmp_path_factory):
  """Saves built-in synthetic data as a [layers, time, neurons] .npy; returns its path."""
  from nmas_jax import data

  def make(name: str, **kwargs) -> str:
    path = tmp_path_factory.mktemp("data") / name
    np.save(path, data.make_synthetic(**kwargs).x_LTN)
    return str(path)

  return make
