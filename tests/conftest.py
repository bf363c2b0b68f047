"""Shared test settings: strict shapes, CPU, small sizes, one compilation cache per session."""

import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

from nmas_jax.training import cpu

jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE_ENV = {
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
# XLA_FLAGS for the suite. LLVM's O1 for XLA:CPU code: the tiny programs compile in about half
# the time (most of the suite's time is compilation); the HLO, and so what the tests check, is
# the one users run. One host device: the CLI's by_latent then runs on one lane; with a test
# worker per core, more lanes only contend (three concurrent tiny sweeps took ~15% longer with
# two lanes each). The lanes have their own tests (test_sharding.py), with their own XLA_FLAGS.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=1", f"{cpu.DEVICE_COUNT_FLAG}=1")


def pytest_configure(config):
  """Many tests run the CLI as a subprocess at the same tiny shapes; a persistent compilation
  cache shared by this session's processes (a fresh directory, removed at the end) compiles each
  shape once. The cached executable is the one XLA compiled, so results are unchanged.
  XLA_FLAGS gains each of TEST_XLA_FLAGS that the user did not set (before JAX starts; child
  processes inherit them)."""
  cpu.add_xla_flags(TEST_XLA_FLAGS)
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    config._nmas_cache = tempfile.mkdtemp(prefix="nmas-jax-test-cache-")
    os.environ.update(_CACHE_ENV, JAX_COMPILATION_CACHE_DIR=config._nmas_cache)
    jax.config.update("jax_compilation_cache_dir", config._nmas_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  if getattr(config, "_nmas_cache", None):
    shutil.rmtree(config._nmas_cache, ignore_errors=True)


@pytest.fixture(scope="module")
def synthetic_npy(tmp_path_factory):
  """Saves built-in synthetic data as a [layers, time, neurons] .npy; returns its path."""
  from nmas_jax.data import synthetic

  def make(name: str, **kwargs) -> str:
    path = tmp_path_factory.mktemp("data") / name
    np.save(path, synthetic.make_synthetic(**kwargs).x_LTN)
    return str(path)

  return make


# Modules in decreasing total time (pytest --durations): with --dist=loadscope each worker takes
# a whole module at a time, in collection order, so the longest go first and the short ones fill
# in at the end (longest-processing-time-first scheduling); the rest keep their order.
SLOW_FIRST = (
  "test_checkpoint.py",
  "test_sharding.py",
  "test_examples.py",
  "test_sweep.py",
  "test_flags.py",
  "test_multiscale.py",
  "test_lfads.py",
  "test_scaling.py",
  "test_models.py",
  "test_train.py",
  "test_api.py",
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable within a module
