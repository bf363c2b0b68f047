"""CPU speed-ups, behind one door: process tuning for XLA:CPU (the CPU stepper: `by_latent`).

Nothing here is needed for correct results, and nothing runs at import. The
CLIs call `tune()` first thing in `main()`, before JAX starts its backend; a
user's own script can do the same. Why each piece exists, with measurements:
docs/notes/2026-11-28-benchmarks.md.

- `tune_cpu_flags`: XLA:CPU's memory-optimised scheduler, and CPU *lanes*:
  one XLA host device per core (at most `MAX_CPU_LANES`). Lanes are not a
  mesh (`sharding.make_mesh("auto")` stays one device); `by_latent` runs its
  programs on them at the same time, so one model's LSTM scan (one core)
  overlaps another model's matmuls.
- `tune_malloc`: glibc options that stop XLA:CPU's per-step temporaries from
  being unmapped and page-faulted back every step.
- `backend_started`: the one place that asks JAX's private API anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from nmas_jax.training import sharding

CPU_XLA_FLAGS = ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",)
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
MAX_CPU_LANES = 8  # so that a big host does not get a copy of the data on dozens of devices

# glibc mallopt parameters (name: (param, value)) for `tune_malloc`.
MALLOC_OPTIONS = {
  "M_MMAP_MAX": (-4, 0),
  "M_TRIM_THRESHOLD": (-1, 1 << 30),
  "M_TOP_PAD": (-2, 64 << 20),
}


def tune(lanes: int | None = None) -> dict[str, Any]:
  """`tune_cpu_flags` and `tune_malloc`; returns what each changed. Call before JAX starts."""
  return {"xla_flags": tune_cpu_flags(lanes), "malloc": tune_malloc()}


def cpu_core_count() -> int:
  """Cores this process may run on (its CPU affinity where the OS reports one)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # macOS, Windows
    return max(1, os.cpu_count() or 1)


def backend_started() -> bool:
  """Whether JAX has created its backends (XLA flags no longer apply then).

  JAX has no public API for this; the private one is asked here and nowhere
  else. Without it (a future JAX), the answer is False: flags are then set as
  if JAX had not started, which only matters when a script calls `tune` late.
  """
  try:
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def add_xla_flags(wanted: Sequence[str]) -> list[str]:
  """Appends to XLA_FLAGS each of `wanted` ("--name=value") whose name it does not hold yet, so
  that a user's own setting wins; returns the flags added. Call before JAX starts."""
  current = os.environ.get("XLA_FLAGS", "")
  added = [f for f in wanted if f.split("=")[0] not in current]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


def tune_cpu_flags(lanes: int | None = None) -> list[str]:
  """Adds `CPU_XLA_FLAGS` and `lanes` host devices to XLA_FLAGS unless the user set them.

  Returns the flags added. `lanes` defaults to this process's cores, at most
  `MAX_CPU_LANES`; when the device count is added, `sharding.LANES_ENV` says
  so, so that meshes (here and in child processes) leave the lanes out.
  Accelerators are unaffected. The scheduler flag only for jaxlib >= 0.10,
  the first version known to have it (an unknown flag aborts XLA). Does
  nothing once JAX has started its backends: the flags could no longer apply
  here, and would only leak into child processes.
  """
  if backend_started():
    return []
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
  added = add_xla_flags(wanted)
  if any(f.startswith(DEVICE_COUNT_FLAG) for f in added):
    os.environ[sharding.LANES_ENV] = str(lanes)
  return added


def tune_malloc() -> dict[str, int]:
  """Applies `MALLOC_OPTIONS` through glibc's mallopt; returns those applied.

  Nothing is changed off Linux/glibc, or when the user tuned malloc (any
  MALLOC_* environment variable, or glibc.malloc.* in GLIBC_TUNABLES). Cost:
  up to `M_TRIM_THRESHOLD` of freed memory kept by the process.
  """
  import ctypes
  import platform

  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return {}
  if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc." in os.environ.get(
    "GLIBC_TUNABLES", ""
  ):
    return {}
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return {}
  return {
    name: value for name, (param, value) in MALLOC_OPTIONS.items() if mallopt(param, value) == 1
  }
