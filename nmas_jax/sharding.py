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


# XLA flag that splits the host into several CPU devices. `tune_cpu_flags` uses it
# to make "lanes" (see `cpu_lanes`); capped so that a big host does not get a
# copy of the data on dozens of devices.
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
MAX_CPU_LANES = 8
_forced_lanes = [0]  # host devices `tune_cpu_flags` created in this process (0: none)


def cpu_core_count() -> int:
  """Cores this process may run on (its CPU affinity where the OS reports one)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # macOS, Windows
    return max(1, os.cpu_count() or 1)


def tune_cpu_flags(lanes: int | None = None) -> list[str]:
  """Adds `CPU_XLA_FLAGS` and CPU lanes to XLA_FLAGS unless the user set them; returns those added.

  Lanes: `DEVICE_COUNT_FLAG`=`lanes` (default: this process's cores, at most
  `MAX_CPU_LANES`) makes that many host devices. The "auto" mesh still uses one
  of them; by_latent runs its per-chunk programs on all of them concurrently
  (`cpu_lanes`), so one model's LSTM scans (single-threaded) overlap another's
  matmuls instead of leaving cores idle. Accelerators are unaffected.

  Call before JAX creates its backend (the CLIs do, at import). The scheduler
  flag only for jaxlib >= 0.10, the first version known to have it: an unknown
  flag aborts XLA. Does nothing once JAX has started its backends: the flags
  could no longer apply here, and would only leak into child processes.
  """
  if _backends_started():
    return []
  current = os.environ.get("XLA_FLAGS", "")
  wanted = []
  try:
    import jaxlib
    if tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) >= (0, 10):
      wanted += list(CPU_XLA_FLAGS)
  except (ImportError, ValueError):
    pass
  lanes = min(cpu_core_count(), MAX_CPU_LANES) if lanes is None else lanes
  if lanes > 1:
    wanted.append(f"{DEVICE_COUNT_FLAG}={lanes}")
  added = [f for f in wanted if f.split("=")[0] not in current]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  if any(f.startswith(DEVICE_COUNT_FLAG) for f in added):
    _forced_lanes[0] = lanes
  return added


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a jax without it: assume not started yet
    return False


def _lanes_forced() -> bool:
  """Whether this process's CPU devices are lanes made by `tune_cpu_flags` (one process, CPU)."""
  return (_forced_lanes[0] > 1 and jax.process_count() == 1 and jax.default_backend() == "cpu"
          and jax.local_device_count() == _forced_lanes[0])


def cpu_lanes(mesh: Mesh) -> list:
  """Devices by_latent may run its chunk programs on, concurrently: the mesh's device first.

  A one-device CPU mesh gets every local CPU device (the host devices of
  `tune_cpu_flags`, or of the user's own `DEVICE_COUNT_FLAG`); anything else
  just its devices.
  """
  devices = list(mesh.devices.flat)
  if len(devices) != 1 or devices[0].platform != "cpu" or jax.process_count() != 1:
    return devices
  return devices + [d for d in jax.local_devices(backend="cpu") if d != devices[0]]


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
  """'auto' puts every device on the models axis; or e.g. 'models:4,data:2'.

  CPU lanes (`tune_cpu_flags`) are not mesh devices: there "auto" is one CPU
  device, and an explicit spec takes as many lanes as it names.
  """
  lanes = devices is None and _lanes_forced()
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
