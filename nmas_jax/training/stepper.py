"""How one step of a whole sweep runs: one small interface, the plain vmap as its main
implementation.

A `Stepper` holds the sweep's state in its own layout between steps (the
"carry"): `pack` turns the padded `TrainState` [models] into it once,
`step` advances every model, `unpack` turns it back for evaluation and
checkpoints. `VmapStepper` is the textbook path and the one on GPU/TPU and
meshes of several devices: every model in one `vmap`ped, jitted step at the
widest latent, the carry being the padded state itself. On one CPU device
`by_latent.ByLatentStepper` runs faster; `make_stepper` is the only place that
chooses between them.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from nmas_jax.config import BATCHINGS
from nmas_jax.data import batches, splits
from nmas_jax.errors import UserError
from nmas_jax.training import by_latent, sharding, train
from nmas_jax.training.table import ModelTable


class Stepper(Protocol):
  """The sweep loop's view of a step."""

  batching: str  # "vmap" or "by_latent"
  lanes: int  # devices whose programs run at the same time (1 for vmap)
  description: str  # for the run's first log line

  def pack(self, state: train.TrainState) -> Any: ...

  def unpack(self, carry: Any) -> train.TrainState: ...

  def diverged_at(self, carry: Any) -> jax.Array: ...  # int32 [models], -1 while finite

  def compile(self, carry: Any) -> None: ...  # ahead of time, so no step pays for it

  # Steps every model; `running` [models] bool may let a stepper skip models that have stopped
  # (their state is then undefined beyond their best one). Metrics [models].
  def step(self, carry: Any, step: int, running=None) -> tuple[Any, dict[str, jax.Array]]: ...

  # Multiplies each model's learning rate by factor [models].
  def scale_learning_rate(self, carry: Any, factor) -> Any: ...


def vmap_step(
  state: train.TrainState,
  x_LTN: jax.Array,
  mask_MN: jax.Array,
  target_MN: jax.Array | None,
  layer_M: jax.Array,
  seed_M: jax.Array,
  step: jax.Array,
  *,
  model,
  tx,
  likelihood: str,
  t_train: int,
  window: int,
  batch_size: int,
  mix_layers: bool = False,
  stride: int = 1,
  batch_sharding=None,
) -> tuple[train.TrainState, dict[str, jax.Array]]:
  """Samples every model's batch for this step and steps all models [models] in one vmap.

  `step` is its own (replicated) scalar, not read from the sharded state, so a
  step on a sharded models axis needs no cross-device traffic.
  """
  x_MBTN = batches.sample_batches(
    x_LTN,
    layer_M,
    seed_M,
    step,
    t_train=t_train,
    window=window,
    batch_size=batch_size,
    mix_layers=mix_layers,
    stride=stride,
  )
  if batch_sharding is not None:  # split each model's batch over the mesh's data axis
    x_MBTN = jax.lax.with_sharding_constraint(x_MBTN, batch_sharding)
  one = functools.partial(train.train_step, model=model, tx=tx, likelihood=likelihood)
  batch = {"x": x_MBTN, "input_mask": mask_MN}
  if target_MN is not None:
    batch["loss_mask"] = target_MN
  return jax.vmap(one)(state, batch)


class VmapStepper:
  """Every model in one jitted `vmap_step`, state donated, sharded on the mesh's models axis."""

  batching = description = "vmap"
  lanes = 1

  def __init__(self, model, tx, prep: splits.Prepared, placed: splits.Placed, mesh):
    by_model = sharding.models_sharding(mesh)
    fn = functools.partial(
      vmap_step,
      model=model,
      tx=tx,
      **prep.step_kwargs(),
      batch_sharding=sharding.batch_sharding(mesh),
    )
    self._fn = jax.jit(fn, donate_argnums=0, out_shardings=(by_model, by_model))
    self._scale = jax.jit(train.scale_learning_rate, out_shardings=by_model)
    self._args = (placed.x_LTN, placed.mask_MN, placed.target_MN, placed.layer_M, placed.seed_M)

  def pack(self, state):
    return state

  def unpack(self, carry):
    return carry

  def diverged_at(self, carry):
    return carry.diverged_at

  def compile(self, carry) -> None:
    self._fn = self._fn.lower(carry, *self._args, jnp.int32(0)).compile()

  def step(self, carry, step: int, running=None):
    del running  # one program: every model steps; the sweep ends when all have stopped
    return self._fn(carry, *self._args, jnp.int32(step))

  def scale_learning_rate(self, carry, factor):
    return self._scale(carry, factor)


# `auto` on one CPU device picks by_latent (a program per latent size) only for sweeps whose
# step does this much work (`padded_step_flops`); below, the single vmapped program compiles
# once. Measured (docs/notes/2026-11-28-benchmarks.md, "Compile time"): at 0.14-1.1 GFLOP the vmap
# step
# was as fast or 9% slower and compiled in 3.5-3.9 s against 8.5-10.1 s; at 1.65 by_latent's
# step was 31% faster but its extra 13 s of compile took ~840 steps to earn back; at 4.5, 65.
BY_LATENT_MIN_FLOPS = 3e9


def padded_step_flops(model, prep: splits.Prepared, num_models: int) -> float:
  """Rough FLOPs of one vmapped step: 6 x parameters (of the widest model) x batch x window x
  models, the usual forward + backward count for weights used once per time bin."""
  shapes = jax.eval_shape(
    model.init,
    jax.random.PRNGKey(0),
    jax.ShapeDtypeStruct((1, prep.window, prep.num_neurons), jnp.float32),
  )
  params = sum(a.size for a in jax.tree.leaves(shapes["params"]))
  return 6.0 * params * prep.batch_size * prep.window * num_models


def resolve_batching(batching: str, mesh) -> str:
  """The batching this mesh allows `auto`: by_latent on one CPU device
  (docs/notes/2026-11-28-benchmarks.md), else
  vmap; `make_stepper` then keeps small sweeps on vmap."""
  if batching not in BATCHINGS:
    raise UserError(f"unknown --batching={batching!r}: choose one of {', '.join(BATCHINGS)}")
  if batching == "auto":
    cpu_single = mesh.devices.size == 1 and jax.devices()[0].platform == "cpu"
    batching = "by_latent" if cpu_single else "vmap"
  return batching


def make_stepper(
  batching: str,
  model,
  tx,
  prep: splits.Prepared,
  placed: splits.Placed,
  table: ModelTable,
  mesh,
  lanes: list | None = None,
) -> Stepper:
  """The stepper `batching` names ("auto", "vmap" or "by_latent") for these models on `mesh`;
  `auto` is by_latent on one CPU device for sweeps of at least `BY_LATENT_MIN_FLOPS` per step.

  `lanes`: devices by_latent may spread its programs over (default: the CPU lanes of `mesh`).
  """
  if not model.cuts_latent:  # e.g. a latent size per band: no one width to cut to
    if batching == "by_latent":
      raise UserError(
        "--batching=by_latent cuts models to one latent width, and this model's "
        "latent size is not one width (it has one per band): use --batching=vmap "
        "or auto"
      )
    return VmapStepper(model, tx, prep, placed, mesh)
  if resolve_batching(batching, mesh) == "vmap" or (
    batching == "auto" and padded_step_flops(model, prep, len(table)) < BY_LATENT_MIN_FLOPS
  ):
    return VmapStepper(model, tx, prep, placed, mesh)
  return by_latent.ByLatentStepper(model, tx, prep, placed, table, mesh, lanes)
