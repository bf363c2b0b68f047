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

from nmas_jax.data import UserError

AXES = ("models", "data")

# XLA:CPU's memory-optimised scheduler runs the sweep step about 10% faster on
# CPU than the default concurrency-optimised one (docs/benchmarks.md).
CPU_XLA_FLAGS = ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",)


def tune_cpu_flags() -> list[str]:
  """Adds `CPU_XLA_FLAGS` to XLA_FLAGS unless the user set them; returns those added.

  Call before JAX creates its backend (the CLIs do, at import). Only for jaxlib
  >= 0.10, the first version known to have the flag: an unknown flag aborts XLA.
  """
  try:
    import jaxlib
    if tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) < (0, 10):
      return []
  except (ImportError, ValueError):
    return []
  current = os.environ.get("XLA_FLAGS", "")
  added = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in current]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


# glibc malloc settings for the CLIs (`tune_malloc`). XLA:CPU allocates each step's
# temporaries afresh; with glibc's defaults the larger ones are mmap-ed and
# unmapped every step (or the heap is trimmed and regrown), so every step pays
# ~7-14k page faults (~15 ms of a ~140 ms step, docs/benchmarks.md). Keeping
# freed memory in the heap removes them. Names are mallopt's parameters.
MALLOC_OPTIONS = {"M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 1 << 30),
                  "M_TOP_PAD": (-2, 64 << 20)}


def tune_malloc() -> dict[str, int]:
  """Applies `MALLOC_OPTIONS` through glibc's mallopt; returns those applied.

  Nothing is changed off Linux/glibc, or when the user tuned malloc (any
  MALLOC_* environment variable, or glibc.malloc.* in GLIBC_TUNABLES). Costs
  at most ~1 GiB of freed memory kept by the process instead of returned to
  the OS.
  """
  import ctypes
  import platform
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return {}
  if (any(k.startswith("MALLOC_") for k in os.environ)
      or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
    return {}
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return {}
  return {name: value for name, (param, value) in MALLOC_OPTIONS.items()
          if mallopt(param, value) == 1}


def make_mesh(spec: str = "auto", devices: list | None = None) -> Mesh:
  """'auto' puts every device on the models axis; or e.g. 'models:4,data:2'."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"models": len(devices), "data": 1}
  if spec and spec != "auto":
    sizes = {"models": 1, "data": 1}
    for part in spec.split(","):
      name, _, size = part.partition(":")
      name = name.strip()
      if name not in AXES or not size.strip().isdigit() or int(size) < 1:
        raise UserError(f"--mesh={spec!r} is not like 'models:4,data:2' (axes: models, data)")
      sizes[name] = int(size)
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
