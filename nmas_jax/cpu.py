"""CPU speed-ups, behind one door: process tuning and the by-latent stepper with CPU lanes.

Nothing here is needed for correct results, and nothing runs at import. The
CLIs call `tune()` first thing in `main()`, before JAX starts its backend; a
user's own script can do the same. Why each piece exists, with measurements:
docs/benchmarks.md.

- `tune_cpu_flags`: XLA:CPU's memory-optimised scheduler, and CPU *lanes*:
  one XLA host device per core (at most `MAX_CPU_LANES`). Lanes are not a
  mesh (`sharding.make_mesh("auto")` stays one device); by_latent runs its
  programs on them at the same time, so one model's LSTM scan (one core)
  overlaps another model's matmuls.
- `tune_malloc`: glibc options that stop XLA:CPU's per-step temporaries from
  being unmapped and page-faulted back every step.
- `ByLatentStepper`: a `stepper.Stepper` that keeps each latent size's state
  at its own width (no model pays for the widest latent; state updated in
  place), compiles at most `MODELS_PER_PROGRAM` models per program, and
  spreads those programs over the lanes. Results equal the vmap's to float
  rounding.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import sharding, splits, train
from nmas_jax.errors import UserError
from nmas_jax.table import ModelTable

CPU_XLA_FLAGS = ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",)
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
MAX_CPU_LANES = 8  # so that a big host does not get a copy of the data on dozens of devices

# glibc mallopt parameters (name: (param, value)) for `tune_malloc`.
MALLOC_OPTIONS = {"M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 1 << 30),
                  "M_TOP_PAD": (-2, 64 << 20)}

# by_latent compiles at most this many models into one program.
MODELS_PER_PROGRAM = 5


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
  if (any(k.startswith("MALLOC_") for k in os.environ)
      or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
    return {}
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return {}
  return {name: value for name, (param, value) in MALLOC_OPTIONS.items()
          if mallopt(param, value) == 1}


def lane_devices(mesh) -> list:
  """Devices by_latent may run programs on at the same time: the mesh's device first.

  A one-device CPU mesh gets every local CPU device (the lanes of
  `tune_cpu_flags`, or the user's own host devices); anything else its devices.
  """
  devices = list(mesh.devices.flat)
  if len(devices) != 1 or devices[0].platform != "cpu" or jax.process_count() != 1:
    return devices
  return devices + [d for d in jax.local_devices(backend="cpu") if d != devices[0]]


def latent_buckets(table: ModelTable) -> tuple[tuple[int, ...], int]:
  """(latents, groups): the models axis seen as [groups = layers x counts x seeds, latents].

  What by_latent needs: a table in `ModelTable.build` order (latent
  innermost, one layer and seed per group) with no padding models.
  """
  num_l = len(dict.fromkeys(table.latent.tolist()))
  latents = tuple(int(k) for k in table.latent[:num_l])
  groups = len(table) // num_l
  grid = lambda a: a[: groups * num_l].reshape(groups, num_l)
  if (groups * num_l != len(table) or not (grid(table.latent) == latents).all()
      or not all((grid(a) == grid(a)[:, :1]).all()
                 for a in (table.layer, table.seed, table.count))):
    raise UserError("--batching=by_latent needs every model on one device (this sweep pads the "
                    "models axis for several devices): use --batching=vmap or auto")
  return latents, groups


def _restack(parts: Sequence[Any], groups: int) -> Any:
  """Trees [groups * w_i, ...] for consecutive latent sizes (w_i per part, latent innermost)
  -> one tree [groups * sum(w_i), ...] in table order."""
  def cat(*p):
    tail = p[0].shape[1:]
    return jnp.concatenate([a.reshape((groups, -1) + tail) for a in p], axis=1).reshape((-1,) + tail)
  return jax.tree.map(cat, *parts)


def _one_model_shapes(model, latent: int) -> train.TrainState:
  """Abstract state (shapes, dtypes) of ONE model of `model`'s kind at latent width `latent`."""
  m = model.clone(latent=latent)
  x = jax.ShapeDtypeStruct((1, 1, m.neurons), jnp.float32)
  return jax.eval_shape(
      lambda key, x: train.init_state(key, latent, 1e-3, 0.0, model=m, clip_norm=1.0,
                                      example_x_BTN=x), jax.random.PRNGKey(0), x)


def bucket_step(parts: tuple, x_LTN: jax.Array, mask_MN: jax.Array, target_MN: jax.Array | None,
                layer_M: jax.Array, seed_M: jax.Array, step: jax.Array, *, model, tx, likelihood: str, t_train: int,
                window: int, batch_size: int, mix_layers: bool, latents: tuple[int, ...],
                groups: int, stride: int = 1) -> tuple[tuple, dict[str, jax.Array]]:
  """Steps the models of `latents` (one packed part each), each latent size at its own width.

  A group's models (same layer and seed, one per latent size) read the same
  windows: they are sampled, and the encoder's input masked, once per group.
  mask_MN, target_MN (or None), layer_M, seed_M are [groups * len(latents)]; metrics are [models]
  in table order.
  """
  layer_G, seed_G, mask_GN = (a[::len(latents)] for a in (layer_M, seed_M, mask_MN))
  x_GBTN = splits.sample_batches(x_LTN, layer_G, seed_G, step, t_train=t_train, window=window,
                                 batch_size=batch_size, mix_layers=mix_layers, stride=stride)
  batch_G = {"x": x_GBTN, "x_in": jax.vmap(train.encoder_input)(x_GBTN, mask_GN),
             "input_mask": mask_GN}  # read by LFADS' coordinated dropout
  if target_MN is not None:
    batch_G["loss_mask"] = target_MN[::len(latents)]
  new, metrics = [], []
  for j, k in enumerate(latents):
    one = functools.partial(train.train_step, model=model, tx=tx, likelihood=likelihood,
                            latent_width=k)
    if groups == 1:  # a packed part has no groups axis then (see ByLatentStepper)
      st, m = one(parts[j], jax.tree.map(lambda a: a[0], batch_G))
      m = jax.tree.map(lambda a: a[None], m)
    else:
      st, m = jax.vmap(one)(parts[j], batch_G)
    new.append(st)
    metrics.append(m)
  return tuple(new), _restack(metrics, groups)


class ByLatentStepper:
  """`stepper.Stepper` for one CPU device: state packed per latent size, programs on CPU lanes.

  The carry is a tuple with one `TrainState` per latent size, [groups =
  layers x seeds] models each (no models axis at all when groups == 1: a
  leading axis of size 1 makes XLA:CPU copy the updated state), every leaf
  cut to exactly that latent width. Unpacking zero-fills the padded units a
  width-k model never uses (the vmap layout keeps their unused initial
  values); outputs, losses and every used weight are the same.

  Chunks: XLA:CPU runs each model of one big program slower than in a small
  one, so latent sizes go into programs of at most `MODELS_PER_PROGRAM`
  models. Lanes: XLA:CPU runs one device's programs one after another, so
  chunk c runs on `lanes[c % len(lanes)]`; its part of the carry stays there
  between steps, and the inputs are copied to each lane once.
  """

  def __init__(self, model, tx, prep: splits.Prepared, placed: splits.Placed, table: ModelTable,
               mesh, lanes: list | None = None):
    latents, groups = latent_buckets(table)
    num_l = len(latents)
    lanes = lane_devices(mesh) if lanes is None else list(lanes)
    per = max(1, min(MODELS_PER_PROGRAM // groups, -(-num_l // len(lanes))))
    self.chunks = [(a, min(a + per, num_l)) for a in range(0, num_l, per)]
    self.devices = [lanes[c % len(lanes)] for c in range(len(self.chunks))]
    self.batching, self.lanes = "by_latent", len(set(self.devices))
    self.description = "by_latent" + (f" on {self.lanes} CPU lanes" if self.lanes > 1 else "")
    step = functools.partial(bucket_step, model=model, tx=tx, likelihood=prep.likelihood,
                             t_train=prep.t_train, window=prep.window, batch_size=prep.batch_size,
                             stride=prep.stride, mix_layers=prep.shared, groups=groups)

    def chunk_step(a, b, parts, x_LTN, mask_MN, target_MN, layer_M, seed_M, step_i):
      cols = lambda v: (None if v is None else
                        v.reshape((groups, num_l) + v.shape[1:])[:, a:b].reshape((-1,) + v.shape[1:]))
      return step(parts, x_LTN, cols(mask_MN), cols(target_MN), cols(layer_M), cols(seed_M),
                  step_i, latents=latents[a:b])

    # A part of the carry may hold scalars, so each chunk's lives whole on its one device.
    self._fns = [jax.jit(functools.partial(chunk_step, a, b), donate_argnums=0,
                         out_shardings=jax.sharding.SingleDeviceSharding(dev))
                 for (a, b), dev in zip(self.chunks, self.devices)]
    args = (placed.x_LTN, placed.mask_MN, placed.target_MN, placed.layer_M, placed.seed_M)
    on = {dev: args if all(a.devices() == {dev} for a in jax.tree.leaves(args))
          else jax.device_put(args, dev)
          for dev in set(self.devices)}
    self._args = [on[dev] for dev in self.devices]
    self._merge = jax.jit(functools.partial(_restack, groups=groups))  # chunks -> [models]
    self._build_layout(model, latents, groups, mesh)

  def _build_layout(self, model, latents, groups, mesh) -> None:
    num_l = len(latents)
    padded = _one_model_shapes(model, model.latent)
    own = [_one_model_shapes(model, k) for k in latents]
    group = slice(None) if groups > 1 else 0  # the groups axis, dropped when it has size 1
    with_groups = (lambda a: a) if groups > 1 else (lambda a: a[None])

    def pack(state):  # [models] padded -> per latent [groups] at own width
      view = lambda a: a.reshape((groups, num_l) + a.shape[1:])
      cut = lambda j: lambda a, t: view(a)[(group, j) + tuple(slice(0, n) for n in t.shape)]
      return tuple(jax.tree.map(cut(j), state, own[j]) for j in range(num_l))

    def unpack(parts):  # the inverse, zero-filling the padded units
      fill = lambda a, t: jnp.pad(a, [(0, 0)] + [(0, n - m) for n, m in zip(t.shape, a.shape[1:])])
      return _restack([jax.tree.map(lambda a, t: fill(with_groups(a), t), p, padded)
                       for p in parts], groups)

    home = sharding.replicated(mesh)  # parts may sit on other lanes: gather them first
    unpack_jit = jax.jit(unpack)
    diverged_jit = jax.jit(lambda d: _restack([with_groups(a) for a in d], groups))
    self.pack = jax.jit(pack)
    self.unpack = lambda parts: unpack_jit(jax.device_put(parts, home))
    self.diverged_at = lambda parts: diverged_jit(
        jax.device_put([p.diverged_at for p in parts], home))

  def _on_lane(self, c: int, parts):
    dev = self.devices[c]
    return parts if jax.tree.leaves(parts)[0].devices() == {dev} else jax.device_put(parts, dev)

  def compile(self, carry) -> None:
    self._fns = [fn.lower(self._on_lane(c, carry[a:b]), *self._args[c], np.int32(0)).compile()
                 for c, (fn, (a, b)) in enumerate(zip(self._fns, self.chunks))]

  def step(self, carry, step: int):
    parts, metrics = [], []
    for c, (fn, (a, b)) in enumerate(zip(self._fns, self.chunks)):
      p, m = fn(self._on_lane(c, carry[a:b]), *self._args[c], np.int32(step))
      parts.extend(p)
      metrics.append(m)
    home = self.devices[0]
    return tuple(parts), self._merge([jax.device_put(m, home) for m in metrics])
