"""The by-latent stepper: one CPU device's speed-up, behind the `stepper.Stepper` interface.

`ByLatentStepper` keeps each latent size's state at its own width (no model pays for the widest
latent; state updated in place), compiles at most `MODELS_PER_PROGRAM` models per program, and
spreads those programs over the CPU lanes that `cpu.tune_cpu_flags` makes, so one model's LSTM
scan (one core) overlaps another model's matmuls. Results equal the vmap's to float rounding.
Measurements: docs/notes/2026-11-28-benchmarks.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import models
from nmas_jax.data import batches, splits
from nmas_jax.errors import UserError
from nmas_jax.training import sharding, train
from nmas_jax.training.table import ModelTable

# by_latent compiles at most this many models into one program.
MODELS_PER_PROGRAM = 5


# From this many neurons per layer, by_latent steps every model as its own computation rather
# than vmapping a part's groups (layers x seeds): XLA:CPU's batched matmuls ran 45 models of
# 1131 neurons at 65% of one layer's throughput, their unrolled steps at 95-107%, for 3.5x the
# compile time (docs/notes/2026-11-28-benchmarks.md); at 200 neurons the step gained 1.2-1.3x for
# 3.5x the
# compile, which short runs do not earn back.
UNROLL_MIN_NEURONS = 512


def lane_devices(mesh) -> list:
  """Devices by_latent may run programs on at the same time: the mesh's device first.

  A one-device CPU mesh gets every local CPU device (the lanes of
  `tune_cpu_flags`, or the user's own host devices); anything else its devices.
  """
  devices = list(mesh.devices.flat)
  if len(devices) != 1 or devices[0].platform != "cpu" or jax.process_count() != 1:
    return devices
  return devices + [d for d in jax.local_devices(backend="cpu") if d != devices[0]]


def latent_buckets(
  table: ModelTable,
) -> tuple[tuple[tuple[int, ...], ...], list[list[np.ndarray]]]:
  """(keys, index): the models axis as parts of one neuron count and one latent size (and
  decoder) each.

  keys[j] is part j's per-model argument as a tuple (`ModelTable.model_latent`'s row: (k,), or
  (k, decoder index)); index[c][j] holds the table indices [groups] of count level c (0: all
  neurons, then --neuron_counts) and key j, in (layer, seed, member) order, the same groups for
  every j.
  What by_latent needs: a table in `ModelTable.build` order with no padding models.
  """
  key_MP = np.asarray(table.model_latent).reshape(len(table), -1)
  every = [tuple(map(int, r)) for r in key_MP]
  num_l = len(dict.fromkeys(every))
  latents = tuple(every[:num_l])
  levels = list(dict.fromkeys(table.count.tolist()))
  index = [
    [np.flatnonzero((table.count == c) & (key_MP == k).all(axis=1)) for k in latents]
    for c in levels
  ]
  rows = lambda i: list(zip(table.layer[i], table.seed[i], table.member[i]))
  groups = len(index[0][0])
  if (
    len(set(every)) != num_l
    or groups * num_l * len(levels) != len(table)
    or any(len(i) != groups or rows(i) != rows(level[0]) for level in index for i in level)
  ):
    raise UserError(
      "--batching=by_latent needs every model on one device (this sweep pads the "
      "models axis for several devices): use --batching=vmap or auto"
    )
  return latents, index


def _to_table(parts: Sequence[Any], inverse: np.ndarray) -> Any:
  """Trees [groups, ...], one per part -> one tree [models, ...] in table order (`inverse`: the
  argsort of the parts' table indices, concatenated)."""
  return jax.tree.map(lambda *p: jnp.concatenate(p)[inverse], *parts)


def _one_model_shapes(model, key: tuple[int, ...], tx) -> train.TrainState:
  """Abstract state (shapes, dtypes) of ONE model of `model`'s family with per-model argument
  `key` (see `latent_buckets`), at latent width key[0]."""
  m = model.clone(latent=key[0])
  latent = key[0] if len(key) == 1 else np.asarray(key, np.int32)
  x = jax.ShapeDtypeStruct((1, 1, m.neurons), jnp.float32)
  init = lambda rng, x: train.init_state(rng, latent, model=m, tx=tx, example_x_BTN=x)
  return jax.eval_shape(init, jax.random.PRNGKey(0), x)


def _with_hparams(shapes: train.TrainState, state: train.TrainState) -> train.TrainState:
  """One model's abstract state `shapes` with `state`'s per-model hyper-parameters (a
  population's, `TrainState.hparams`: one scalar per model)."""
  scalar = lambda a: jax.ShapeDtypeStruct((), a.dtype)
  return shapes.replace(hparams=jax.tree.map(scalar, state.hparams))


def narrow_index(mask_GN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each group's neurons where mask_GN > 0, as (indices, weights) [groups, width]: width is the
  largest group's count, shorter rows padded with neuron 0 at weight 0."""
  sets = [np.flatnonzero(m > 0) for m in mask_GN]
  width = max(1, max(len(i) for i in sets))
  idx = np.zeros((len(sets), width), np.int32)
  w = np.zeros((len(sets), width), np.float32)
  for g, i in enumerate(sets):
    idx[g, : len(i)], w[g, : len(i)] = i, 1.0
  return idx, w


def bucket_step(
  parts: tuple,
  x_LTN: jax.Array,
  mask_GN: jax.Array,
  target_GN: jax.Array | None,
  layer_G: jax.Array,
  seed_G: jax.Array,
  narrow: tuple | None,
  step: jax.Array,
  *,
  model,
  tx,
  likelihood: str,
  t_train: int,
  window: int,
  batch_size: int,
  mix_layers: bool,
  latents: tuple[tuple[int, ...], ...],
  groups: int,
  stride: int = 1,
) -> tuple[tuple, dict[str, jax.Array]]:
  """Steps the models of `latents` (part keys, `latent_buckets`; one packed part each, [groups]
  models of one neuron count), each latent size at its own width (`Family.for_part`).

  A group's models (same layer, count and seed, one per latent size) read the same windows:
  they are sampled, and the encoder's input masked, once per group. With `narrow` (indices and
  weights [groups, I] of the inputs, [groups, O] of the outputs), each model is cut to those
  neurons (`Family.narrowed`). Metrics: one tree [groups] per latent size.
  """
  x_GBTN = batches.sample_batches(
    x_LTN,
    layer_G,
    seed_G,
    step,
    t_train=t_train,
    window=window,
    batch_size=batch_size,
    mix_layers=mix_layers,
    stride=stride,
  )
  if narrow is None:
    batch_G = {
      "x": x_GBTN,
      "x_in": jax.vmap(train.encoder_input)(x_GBTN, mask_GN),
      "input_mask": mask_GN,
    }  # read by LFADS' coordinated dropout
    if target_GN is not None:
      batch_G["loss_mask"] = target_GN
  else:
    in_GI, in_w_GI, out_GO, out_w_GO = narrow
    take = jax.vmap(lambda x_BTN, i: jnp.take(x_BTN, i, axis=-1))
    batch_G = {
      "x": take(x_GBTN, out_GO),
      "x_in": take(x_GBTN, in_GI) * in_w_GI[:, None, None, :],
      "loss_mask": out_w_GO,
      "neurons_in": in_GI,
      "neurons_out": out_GO,
    }
  new, metrics = [], []
  for j, key in enumerate(latents):
    one = functools.partial(
      train.train_step,
      model=model.for_part(key),
      tx=tx,
      likelihood=likelihood,
      latent_width=key[0],
    )
    if groups == 1:  # a packed part has no groups axis then (see ByLatentStepper)
      st, m = one(parts[j], jax.tree.map(lambda a: a[0], batch_G))
      m = jax.tree.map(lambda a: a[None], m)
    else:
      st, m = jax.vmap(one)(parts[j], batch_G)
    new.append(st)
    metrics.append(m)
  return tuple(new), tuple(metrics)


def _segments(a: int, b: int, num_l: int) -> list[tuple[int, int, int]]:
  """A chunk's parts [a, b) as (level, first latent, stop latent) runs of one level each."""
  return [
    (c, max(a, c * num_l) - c * num_l, min(b, (c + 1) * num_l) - c * num_l)
    for c in range(a // num_l, (b - 1) // num_l + 1)
  ]


def _chunk_step(step, latents, segs, parts, x_LTN, args, step_i):
  """One chunk's program: `step` (a `bucket_step`) on each of its segments."""
  new, metrics, at = [], [], 0
  for (_, ja, jb), arg in zip(segs, args):
    p, m = step(parts[at : at + jb - ja], x_LTN, *arg, step_i, latents=latents[ja:jb])
    new += p
    metrics += m
    at += jb - ja
  return tuple(new), tuple(metrics)


class ByLatentStepper:
  """`stepper.Stepper` for one CPU device: state packed per (neuron count, latent size),
  programs on CPU lanes.

  The carry is a tuple with one `TrainState` per neuron count level and latent size (count
  major), [groups = layers x seeds] models each (no models axis at all when groups == 1: a
  leading axis of size 1 makes XLA:CPU copy the updated state), every leaf cut to exactly that
  latent width. Unpacking zero-fills the padded units a width-k model never uses (the vmap
  layout keeps their unused initial values); outputs, losses and every used weight are the same.

  Groups: from `UNROLL_MIN_NEURONS` neurons each model is its own part (no vmap at all).
  Neuron counts: a --neuron_counts model (`Family.narrows`) runs on its own neurons only, so a small
  count costs less than a large one; the vmap stepper masks instead (the same results).
  Chunks: XLA:CPU runs each model of one big program slower than in a small one, so the parts
  (count major, latent minor) go into programs of at most `MODELS_PER_PROGRAM` models. Lanes:
  XLA:CPU runs one device's programs one after another, so chunk c runs on
  `lanes[c % len(lanes)]`; its part of the carry stays there between steps, and the inputs are
  copied to each lane once.
  """

  def __init__(
    self,
    model,
    tx,
    prep: splits.Prepared,
    placed: splits.Placed,
    table: ModelTable,
    mesh,
    lanes: list | None = None,
  ):
    latents, index = latent_buckets(table)
    # Large models: one computation per model, no vmap over groups (see UNROLL_MIN_NEURONS).
    self.unrolled = len(index[0][0]) > 1 and model.neurons >= UNROLL_MIN_NEURONS
    if self.unrolled:
      index = [[i[g : g + 1] for i in level] for level in index for g in range(len(level[0]))]
    num_l, groups = len(latents), len(index[0][0])
    lanes = lane_devices(mesh) if lanes is None else list(lanes)
    num_p = num_l * len(index)  # parts: count level major, latent minor
    per = max(1, min(MODELS_PER_PROGRAM // groups, -(-num_p // len(lanes))))
    self.chunks = [(a, min(a + per, num_p)) for a in range(0, num_p, per)]  # part ranges
    self.devices = [lanes[i % len(lanes)] for i in range(len(self.chunks))]
    self.batching, self.lanes = "by_latent", len(set(self.devices))
    self.description = "by_latent" + (f" on {self.lanes} CPU lanes" if self.lanes > 1 else "")
    step = functools.partial(bucket_step, model=model, tx=tx, **prep.step_kwargs(), groups=groups)
    order = np.concatenate([i for level in index for i in level])
    self._part_models = [i for level in index for i in level]  # each part's table indices
    self._chunk_models = [order[a * groups : b * groups] for a, b in self.chunks]
    self._inverse = np.argsort(order)
    first = [level[0] for level in index]  # each count level's groups' table indices
    narrow_levels = {c for c in range(len(index)) if table.count[first[c][0]] and model.narrows()}
    self.narrowed = len(narrow_levels)  # levels whose models run on their own neurons

    def level_args(c):
      """(mask [G, N], target [G, N] or None, layer [G], seed [G], narrow or None) of level c."""
      pick = lambda v: None if v is None else np.asarray(v)[first[c]]
      mask, target = pick(placed.mask_MN), pick(placed.target_MN)
      narrow = None
      if c in narrow_levels:
        narrow = (*narrow_index(mask), *narrow_index(target))
      return (mask, target, pick(placed.layer_M), pick(placed.seed_M), narrow)

    segs = [_segments(a, b, num_l) for a, b in self.chunks]
    self._fns = [
      jax.jit(
        functools.partial(_chunk_step, step, latents, sg),
        donate_argnums=0,
        out_shardings=jax.sharding.SingleDeviceSharding(dev),
      )
      for sg, dev in zip(segs, self.devices)
    ]
    x_on = {
      dev: placed.x_LTN if placed.x_LTN.devices() == {dev} else jax.device_put(placed.x_LTN, dev)
      for dev in set(self.devices)
    }
    self._args = [
      (x_on[dev], jax.device_put(tuple(level_args(c) for c, _, _ in sg), dev))
      for sg, dev in zip(segs, self.devices)
    ]
    self._metrics: dict[int, Any] = {}  # each chunk's last metrics
    self._scale = jax.jit(train.scale_learning_rate)
    self._merge = jax.jit(lambda m: _to_table([p for chunk in m for p in chunk], self._inverse))
    self._build_layout(model, tx, latents, index, mesh)

  def _build_layout(self, model, tx, latents, index, mesh) -> None:
    groups = len(index[0][0])
    width = (model.latent,) + latents[0][1:]  # the padded model (at the first part's decoder)
    padded = _one_model_shapes(model, width, tx)
    own = [_one_model_shapes(model, k, tx) for k in latents]
    flat = [(i, j) for level in index for j, i in enumerate(level)]  # (table indices, latent j)
    drop = (lambda a: a) if groups > 1 else (lambda a: a[0])  # the groups axis of size 1
    with_groups = (lambda a: a) if groups > 1 else (lambda a: a[None])

    def pack(state):  # [models] padded -> per (count, latent) [groups] at own width
      take = lambda i: jax.tree.map(lambda a: a[i], state)
      return tuple(
        jax.tree.map(drop, models.cut_to(take(i), _with_hparams(own[j], state), lead=1))
        for i, j in flat
      )

    def unpack(parts):  # the inverse, zero-filling the padded units
      fill = lambda a, t: jnp.pad(a, [(0, 0)] + [(0, n - m) for n, m in zip(t.shape, a.shape[1:])])
      like = _with_hparams(padded, parts[0])
      return _to_table(
        [jax.tree.map(lambda a, t: fill(with_groups(a), t), p, like) for p in parts],
        self._inverse,
      )

    home = sharding.replicated(mesh)  # parts may sit on other lanes: gather them first
    unpack_jit = jax.jit(unpack)
    diverged_jit = jax.jit(lambda d: _to_table([with_groups(a) for a in d], self._inverse))
    self.pack = jax.jit(pack)
    self.unpack = lambda parts: unpack_jit(jax.device_put(parts, home))
    self.diverged_at = lambda parts: diverged_jit(
      jax.device_put([p.diverged_at for p in parts], home)
    )

  def _on_lane(self, c: int, parts):
    dev = self.devices[c]
    return parts if jax.tree.leaves(parts)[0].devices() == {dev} else jax.device_put(parts, dev)

  def compile(self, carry) -> None:
    self._fns = [
      fn.lower(self._on_lane(c, carry[a:b]), *self._args[c], np.int32(0)).compile()
      for c, (fn, (a, b)) in enumerate(zip(self._fns, self.chunks))
    ]

  def step(self, carry, step: int, running=None):
    """Runs each chunk's program, except a chunk whose models have all stopped (`running`
    [models] False): its state stays, and its metrics are its last step's."""
    parts = []
    for c, (fn, (a, b)) in enumerate(zip(self._fns, self.chunks)):
      if running is not None and not running[self._chunk_models[c]].any():
        parts.extend(carry[a:b])
        if c not in self._metrics:  # stopped before this run (a resume): zero metrics
          zeros = lambda s: jax.device_put(np.zeros(s.shape, s.dtype), self.devices[c])
          self._metrics[c] = jax.tree.map(zeros, fn.out_info[1])
        continue
      p, self._metrics[c] = fn(self._on_lane(c, carry[a:b]), *self._args[c], np.int32(step))
      parts.extend(p)
    home = self.devices[0]
    metrics = [self._metrics[c] for c in range(len(self.chunks))]
    return tuple(parts), self._merge([jax.device_put(m, home) for m in metrics])

  def scale_learning_rate(self, carry, factor):
    """Each part's models' learning rates times factor [models] (on their lanes)."""
    groups = self._part_models[0].size > 1
    return tuple(
      self._scale(p, factor[i] if groups else factor[i[0]])
      for p, i in zip(carry, self._part_models)
    )
