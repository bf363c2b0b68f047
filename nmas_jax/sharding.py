"""Spreading the models axis (layers x latents x seeds) over devices and hosts.

A `Mesh` with axes ("models", "data"): every state leaf is sharded on its
leading models axis, so each device holds only its share of the models; the
per-step batch is additionally split over "data". The models axis is padded to
a multiple of its mesh size with inert copies that never reach the results.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nmas_jax.errors import UserError

AXES = ("models", "data")

# `cpu.tune_cpu_flags` sets this to the number of host devices it made as CPU lanes
# (beside XLA_FLAGS, so a child process inherits both): those devices are not a mesh.
LANES_ENV = "NMAS_CPU_LANES"


def _lanes_made() -> bool:
  """Whether this process's CPU devices are lanes made by `cpu.tune_cpu_flags` (one process, CPU)."""
  lanes = os.environ.get(LANES_ENV, "")
  return (lanes.isdigit() and int(lanes) > 1 and jax.process_count() == 1
          and jax.default_backend() == "cpu" and jax.local_device_count() == int(lanes))


def make_mesh(spec: str = "auto", devices: list | None = None) -> Mesh:
  """'auto' puts every device on the models axis; or e.g. 'models:4,data:2'.

  CPU lanes (`cpu.tune_cpu_flags`) are not mesh devices: there "auto" is one
  CPU device, and an explicit spec takes as many lanes as it names.
  """
  lanes = devices is None and _lanes_made()
  devices = list(jax.devices() if devices is None else devices)
  if lanes and spec in ("", "auto"):
    devices = devices[:1]
  sizes = {"models": len(devices), "data": 1}
  if spec and spec != "auto":
    sizes = {"models": 1, "data": 1}
    for part in spec.split(","):
      name, _, size = part.partition(":")
      name = name.strip()
      if name not in AXES or not size.strip().isdigit() or int(size) < 1:
        raise UserError(f"--mesh={spec!r} is not like 'models:4,data:2' (axes: models, data)")
      sizes[name] = int(size)
    if lanes and sizes["models"] * sizes["data"] < len(devices):
      devices = devices[:sizes["models"] * sizes["data"]]
    if sizes["models"] * sizes["data"] != len(devices):
      raise UserError(f"--mesh={spec} needs {sizes['models'] * sizes['data']} devices, but "
                      f"{len(devices)} are visible: make the sizes multiply to {len(devices)}")
  grid = np.array(devices).reshape(sizes["models"], sizes["data"])
  return Mesh(grid, AXES)


def padded_size(num_models: int, mesh: Mesh) -> int:
  """Models axis length rounded up to a multiple of the mesh's models axis."""
  m = mesh.shape["models"]
  return -(-num_models // m) * m


def models_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over "models", everything else replicated."""
  return NamedSharding(mesh, P("models"))


def batch_sharding(mesh: Mesh) -> NamedSharding | None:
  """[models, batch, ...] split over both axes, or None when the data axis has size 1."""
  return NamedSharding(mesh, P("models", "data")) if mesh.shape["data"] > 1 else None


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from the same host value on every process (multi-host safe)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def gather(tree: Any) -> Any:
  """Every leaf as a full host numpy array on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """jax.distributed.initialize, from explicit flags or the TPU/cluster environment.

  On CPU the cross-process collectives use gloo.
  """
  if all(v is None for v in (coordinator_address, num_processes, process_id)):
    jax.distributed.initialize()
    return
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
