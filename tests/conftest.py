"""Shared test settings: strict shapes, CPU, small sizes."""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="module")
def synthetic_npy(tmp_path_factory):
  """Saves built-in synthetic data as a [layers, time, neurons] .npy; returns its path."""
  from nmas_jax import synthetic

  def make(name: str, **kwargs) -> str:
    path = tmp_path_factory.mktemp("data") / name
    np.save(path, synthetic.make_synthetic(**kwargs).x_LTN)
    return str(path)

  return make
