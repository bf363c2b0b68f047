"""Spreading the models axis (layers x latents x seeds) over devices and hosts.

A `Mesh` with axes ("models", "data"): every state leaf is sharded on its
leading models axis, so each device holds only its share of the models; the
per-step batch is additionally split over "data". The models axis is padded to
a multiple of its mesh size with inert copies that never reach the results.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nmas_jax.errors import UserError

AXES = ("models", "data")

# `cpu.tune_cpu_flags` sets this to the number of host devices it made as CPU lanes
# (beside XLA_FLAGS, so a child process inherits both): those devices are not a mesh.
LANES_ENV = "NMAS_CPU_LANES"


def _lanes_made() -> bool:
  """Whether this process's CPU devices are lanes made by `cpu.tune_cpu_flags` (one process,
  CPU)."""
  lanes = os.environ.get(LANES_ENV, "")
  return (
    lanes.isdigit()
    and int(lanes) > 1
    and jax.process_count() == 1
    and jax.default_backend() == "cpu"
    and jax.local_device_count() == int(lanes)
  )


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
      devices = devices[: sizes["models"] * sizes["data"]]
    if sizes["models"] * sizes["data"] != len(devices):
      raise UserError(
        f"--mesh={spec} needs {sizes['models'] * sizes['data']} devices, but "
        f"{len(devices)} are visible: make the sizes multiply to {len(devices)}"
      )
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


def take(tree: Any, index: Any) -> Any:
  """Every leaf's rows `index` (an int drops the axis) along the leading (models) axis, in one
  compiled gather: indexing leaf by leaf compiles a program per leaf shape and index."""
  return _take(tree, jax.numpy.asarray(index))


_take = jax.jit(lambda tree, index: jax.tree.map(lambda a: a[index], tree))


def gather(tree: Any) -> Any:
  """Every leaf as a full host numpy array on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  heartbeat_timeout_s: int = 100,
) -> None:
  """jax.distributed.initialize, from explicit flags or the TPU/cluster environment.

  On CPU the cross-process collectives use gloo. JAX's runtime aborts every
  process `heartbeat_timeout_s` after one stops responding; `Watchdog`
  reports it first, in one line.
  """
  timeout = {"heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
  if all(v is None for v in (coordinator_address, num_processes, process_id)):
    jax.distributed.initialize(**timeout)
    return
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    **timeout,
  )


class Watchdog:
  """Names a lost host: every process touches `<workdir>/heartbeats/<process>` every few seconds
  and checks the others'. When one has been silent for half the heartbeat timeout (a collective
  that hangs), or a collective fails while one has missed a few beats (gloo notices a closed
  connection at once), it prints one line (which process, the last complete checkpoint, how to
  resume) and exits, before JAX's runtime aborts with its wall of errors. Needs the workdir on a
  disk every host sees (as multi-host runs need anyway). A context manager; does nothing with one
  process."""

  def __init__(
    self,
    workdir: str,
    heartbeat_timeout_s: float,
    latest_step: Callable[[], Any],
    exit: Callable[[int], None] = os._exit,
  ):
    self.dir = os.path.join(workdir, "heartbeats")
    self.silent_s = heartbeat_timeout_s / 2
    self.beat_s = max(self.silent_s / 5, 0.2)
    self.latest_step, self.exit = latest_step, exit
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._started = time.time()

  def __enter__(self) -> Watchdog:
    if jax.process_count() > 1:
      os.makedirs(self.dir, exist_ok=True)
      self._beat()
      self._thread = threading.Thread(target=self._run, name="nmas-watchdog", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, exc_type, *_) -> None:
    self._stop.set()
    if exc_type is None or self._thread is None or not issubclass(exc_type, Exception):
      return
    # A failed collective: a peer that has missed three beats within the wait is the cause.
    deadline = time.time() + self.silent_s
    while time.time() < deadline:
      self._beat()
      lost = self._silent(3 * self.beat_s)
      if lost is not None:
        self._report(*lost)
        return
      time.sleep(self.beat_s / 2)

  def _beat(self) -> None:
    with open(os.path.join(self.dir, str(jax.process_index())), "w", encoding="utf-8") as f:
      f.write(str(time.time()))

  def _silent(self, limit_s: float) -> tuple[int, float] | None:
    """The first other process whose heartbeat is older than `limit_s`, with its age."""
    now = time.time()
    for p in range(jax.process_count()):
      path = os.path.join(self.dir, str(p))
      seen = os.path.getmtime(path) if os.path.exists(path) else self._started
      if p != jax.process_index() and now - seen > limit_s:
        return p, now - seen
    return None

  def _report(self, process: int, silent_s: float) -> None:
    print(
      f"error: process {process} stopped responding (no heartbeat for {silent_s:.0f}s); the "
      f"last complete checkpoint is at step {self.latest_step()}; rerun every process with the "
      "same command to resume from it",
      file=sys.stderr,
      flush=True,
    )
    self.exit(1)

  def _run(self) -> None:
    while not self._stop.wait(self.beat_s):
      self._beat()
      lost = self._silent(self.silent_s)
      if lost is not None:
        self._report(*lost)
        return
