"""A whole latent-size sweep as ONE batched, jitted computation.

The models axis is layers x latents x seeds (layer-major, see `ModelTable`).
Every leaf of the sweep's `TrainState` has that leading axis; one jitted call
samples every model's batch and steps every model.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import data as data_lib
from nmas_jax import models, sharding, train
from nmas_jax.data import UserError


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """Everything that defines a sweep besides the data."""

  latents: tuple[int, ...] = (10, 25, 50, 75, 150)
  seeds: int = 1
  steps: int = 600
  batch_size: int = 16
  window: int = 50
  hidden: int = 128
  learning_rate: float = 3e-3
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  decoder: str = "linear"
  bidirectional: bool = False
  likelihood: str = "auto"   # auto: poisson for lorenz (counts), else gaussian
  heldout_neurons: float = 0.2
  train_fraction: float = 0.8
  log_every: int = 100
  unroll: int = 1
  dtype: str = "float32"  # matmul dtype (bfloat16 on GPU/TPU); LSTM state and losses stay float32


@dataclasses.dataclass(frozen=True)
class ModelTable:
  """What each index of the models axis means: [models] arrays; order layer, seed, latent."""

  layer: np.ndarray   # int, index into the dataset's layers
  latent: np.ndarray  # int, latent size k
  seed: np.ndarray    # int, model seed (init and batch order)

  @classmethod
  def build(cls, num_layers: int, latents: Sequence[int], seeds: int) -> "ModelTable":
    grid = np.array([(l, k, s) for l in range(num_layers) for s in range(seeds) for k in latents],
                    dtype=np.int32).reshape(-1, 3)
    return cls(grid[:, 0], grid[:, 1], grid[:, 2])

  def __len__(self) -> int:
    return len(self.layer)

  def padded(self, size: int) -> "ModelTable":
    """Extends the table to `size` models with inert copies of the last model."""
    extra = size - len(self)
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], extra)])
    return ModelTable(pad(self.layer), pad(self.latent), pad(self.seed)) if extra else self


def parse_latents(text: str | Sequence[Any]) -> tuple[int, ...]:
  """'10,25,50' -> (10, 25, 50), with a one-line error for anything else."""
  items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
  items = [t for t in items if t]
  if not items:
    raise UserError("--latents is empty: give latent sizes, e.g. --latents=10,25,50,75,150")
  out = []
  for t in items:
    try:
      k = int(t)
    except ValueError:
      raise UserError(f"--latents has {t!r}, not an integer: give positive integers, "
                      "e.g. --latents=10,25,50") from None
    if k <= 0:
      raise UserError(f"--latents has {k}: latent sizes must be positive integers")
    if k in out:
      raise UserError(f"--latents lists {k} twice: give each latent size once")
    out.append(k)
  return tuple(out)


def check_config(cfg: SweepConfig, dataset: data_lib.Dataset) -> int:
  """Raises UserError for a config that cannot run on this data; returns t_train."""
  parse_latents(cfg.latents)
  for name in ("seeds", "steps", "batch_size", "hidden", "log_every", "unroll"):
    if getattr(cfg, name) < 1:
      raise UserError(f"--{name} must be a positive integer, got {getattr(cfg, name)}")
  if cfg.learning_rate <= 0:
    raise UserError(f"--learning_rate must be positive, got {cfg.learning_rate}")
  if cfg.weight_decay < 0:
    raise UserError(f"--weight_decay must be >= 0, got {cfg.weight_decay}")
  if cfg.dtype not in ("float32", "bfloat16"):
    raise UserError(f"unknown --dtype={cfg.dtype!r}: choose float32 or bfloat16")
  if cfg.decoder not in models.DECODERS:
    raise UserError(f"unknown --decoder={cfg.decoder!r}: choose one of {', '.join(models.DECODERS)}")
  if cfg.likelihood not in train.LIKELIHOODS + ("auto",):
    raise UserError(f"unknown --likelihood={cfg.likelihood!r}: choose one of {', '.join(train.LIKELIHOODS)}")
  if max(cfg.latents) > dataset.num_neurons:
    raise UserError(f"latent size {max(cfg.latents)} exceeds the {dataset.num_neurons} neurons per "
                    "layer: drop it from --latents")
  if likelihood(cfg, dataset) == "poisson" and (dataset.x_LTN < 0).any():
    raise UserError("--likelihood=poisson needs non-negative counts, but the data has negative "
                    "values: use --likelihood=gaussian or --normalize=none on count data")
  data_lib.heldout_mask(dataset.num_layers, dataset.num_neurons, cfg.heldout_neurons)
  t_train = data_lib.train_time(dataset.num_time, cfg.train_fraction)
  data_lib.check_window(dataset.num_time, t_train, cfg.window)
  return t_train


def likelihood(cfg: SweepConfig, dataset: data_lib.Dataset) -> str:
  """The observation model in use: cfg.likelihood, with auto = poisson for Lorenz counts."""
  if cfg.likelihood != "auto":
    return cfg.likelihood
  return "poisson" if dataset.name == "lorenz" else "gaussian"


def input_masks(cfg: SweepConfig, dataset: data_lib.Dataset) -> np.ndarray:
  """[layers, neurons] float32 encoder-input mask: 0 for held-out neurons."""
  held = data_lib.heldout_mask(dataset.num_layers, dataset.num_neurons, cfg.heldout_neurons)
  return (~held).astype(np.float32)


def make_model(cfg: SweepConfig, neurons: int) -> models.LSTMAutoencoder:
  """The padded autoencoder every model of the sweep shares (width = max latent)."""
  return models.LSTMAutoencoder(neurons=neurons, latent=max(cfg.latents), hidden=cfg.hidden,
                                decoder=cfg.decoder, bidirectional=cfg.bidirectional,
                                unroll=cfg.unroll,
                                dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32)


def init_sweep(cfg: SweepConfig, table: ModelTable, neurons: int,
               out_sharding: Any = None) -> train.TrainState:
  """All models' states, by one vmapped init (placed with `out_sharding` when given).

  A model's init key depends on (seed, layer) only, so models that differ in
  latent size start from the same weights on their shared units.
  """
  model = make_model(cfg, neurons)
  keys = jax.vmap(lambda s, l: jax.random.fold_in(jax.random.PRNGKey(s), l))(
      jnp.asarray(table.seed), jnp.asarray(table.layer))
  example = jnp.zeros((1, cfg.window, neurons), jnp.float32)
  init = functools.partial(train.init_state, model=model, clip_norm=cfg.clip_norm,
                           example_x_BTN=example)
  m = len(table)
  return jax.jit(jax.vmap(init), out_shardings=out_sharding)(keys, jnp.asarray(table.latent),
                                 jnp.full((m,), cfg.learning_rate, jnp.float32),
                                 jnp.full((m,), cfg.weight_decay, jnp.float32))


BATCHINGS = ("auto", "vmap", "by_latent")


def latent_buckets(table: ModelTable) -> tuple[tuple[int, ...], int]:
  """(latents, groups): the models axis seen as [groups = layers x seeds, latents].

  What `batching="by_latent"` needs: a table in `ModelTable.build` order
  (latent innermost, one layer and seed per group) with no padding models.
  """
  num_l = len(dict.fromkeys(table.latent.tolist()))
  latents = tuple(int(k) for k in table.latent[:num_l])
  groups = len(table) // num_l
  grid = lambda a: a[: groups * num_l].reshape(groups, num_l)
  if (groups * num_l != len(table) or not (grid(table.latent) == latents).all()
      or not all((grid(a) == grid(a)[:, :1]).all() for a in (table.layer, table.seed))):
    raise UserError("--batching=by_latent needs every model on one device (this sweep pads the "
                    "models axis for several devices): use --batching=vmap or auto")
  return latents, groups


def resolve_batching(batching: str, mesh) -> str:
  """The batching to use on this machine: `auto` picks what measured fastest (docs/benchmarks.md).

  One CPU device: by_latent (smaller working sets, and no model pays for the
  widest latent). Accelerators or several devices: every model in one vmap,
  sharded on the models axis.
  """
  if batching not in BATCHINGS:
    raise UserError(f"unknown --batching={batching!r}: choose one of {', '.join(BATCHINGS)}")
  cpu_single = mesh.devices.size == 1 and jax.devices()[0].platform == "cpu"
  if batching == "auto":
    batching = "by_latent" if cpu_single else "vmap"
  return batching


def _one_model_shapes(model, latent: int) -> train.TrainState:
  """Abstract state (shapes, dtypes) of ONE model of `model`'s kind at latent width `latent`."""
  m = model.clone(latent=latent)
  x = jax.ShapeDtypeStruct((1, 1, m.neurons), jnp.float32)
  return jax.eval_shape(
      lambda key, x: train.init_state(key, latent, 1e-3, 0.0, model=m, clip_norm=1.0,
                                      example_x_BTN=x), jax.random.PRNGKey(0), x)


class StepLayout:
  """How the jitted sweep step holds every model's state between steps.

  "vmap": the padded `TrainState` [models] itself (pack/unpack are identities).
  "by_latent": a tuple with one `TrainState` per latent size, [groups = layers
  x seeds] models each (no models axis at all when groups == 1), every leaf
  cut to exactly that latent width. The step then updates each model's params
  and optimiser state in place at its own width, instead of slicing the padded
  state and re-stacking it every step. On a 2-core CPU, default 5-model
  benchmark: 145 ms with the padded state, 127 ms packed; a leading axis of
  size 1 alone costs ~15% (XLA:CPU then copies the updated state), hence none.

  `pack` turns the padded state into the step's layout (once, before the first
  step); `unpack` turns it back (for evaluation, checkpoints and results).
  Unpacking zero-fills the padded units a width-k model never uses, where the
  vmap layout keeps their (unused) initial values; outputs, losses and every
  used weight are the same.
  """

  def __init__(self, model, table: ModelTable, batching: str, mesh):
    self.batching = resolve_batching(batching, mesh)
    self.buckets = latent_buckets(table) if self.batching == "by_latent" else None
    if self.buckets is None:
      self.pack = self.unpack = lambda state: state
      self.diverged_at = lambda state: state.diverged_at
      return
    latents, groups = self.buckets
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

    # The step may leave each part on its own CPU lane (`ChunkedStep`): gather them first.
    home = sharding.replicated(mesh)
    unpack_jit = jax.jit(unpack)
    diverged_jit = jax.jit(lambda d: _restack([with_groups(a) for a in d], groups))
    self.pack = jax.jit(pack)
    self.unpack = lambda parts: unpack_jit(jax.device_put(parts, home))
    self.diverged_at = lambda parts: diverged_jit(
        jax.device_put([p.diverged_at for p in parts], home))


def _restack(parts: Sequence[Any], groups: int) -> Any:
  """Trees [groups * w_i, ...] for consecutive latent sizes (w_i per part, latent innermost)
  -> one tree [groups * sum(w_i), ...] in table order."""
  def cat(*p):
    tail = p[0].shape[1:]
    return jnp.concatenate([a.reshape((groups, -1) + tail) for a in p], axis=1).reshape((-1,) + tail)
  return jax.tree.map(cat, *parts)


def sweep_step(state: Any, x_LTN: jax.Array, mask_LN: jax.Array, layer_M: jax.Array,
               seed_M: jax.Array, step: jax.Array, *, model, tx, likelihood: str, t_train: int,
               window: int, batch_size: int, mix_layers: bool = False, batch_sharding=None,
               buckets=None):
  """Samples every model's batch for this step and steps all models at once.

  `step` is passed as its own (replicated) scalar, not read from the sharded
  state, so a step on a sharded models axis needs no cross-device traffic.

  buckets=None: state is the padded `TrainState` [models]; one vmap over all
  models at the padded latent width.
  buckets=latent_buckets(table): state is `StepLayout.pack`ed (one TrainState
  per latent size, at that width); the models of each latent size run as one
  vmap at exactly that width, so no model pays for the widest latent and the
  state is updated in place. Same results up to float rounding. One jitted
  call for all the models given (`make_step_fn` gives by_latent a chunk of
  latent sizes per call). Metrics are [models] in table order either way.
  """
  if buckets is None:
    x_MBTN = data_lib.sample_batches(x_LTN, layer_M, seed_M, step, t_train=t_train,
                                     window=window, batch_size=batch_size, mix_layers=mix_layers)
    if batch_sharding is not None:  # split each model's batch over the mesh's data axis
      x_MBTN = jax.lax.with_sharding_constraint(x_MBTN, batch_sharding)
    one = functools.partial(train.train_step, model=model, tx=tx, likelihood=likelihood)
    return jax.vmap(one)(state, {"x": x_MBTN, "input_mask": mask_LN[layer_M]})

  latents, groups = buckets
  # A group's models (same layer and seed, one per latent size) read the same windows:
  # sample them, and mask the encoder's input, once per group.
  layer_G, seed_G = layer_M[::len(latents)], seed_M[::len(latents)]
  x_GBTN = data_lib.sample_batches(x_LTN, layer_G, seed_G, step, t_train=t_train, window=window,
                                   batch_size=batch_size, mix_layers=mix_layers)
  batch_G = {"x": x_GBTN, "x_in": jax.vmap(train.encoder_input)(x_GBTN, mask_LN[layer_G])}

  parts, metrics = [], []
  for j, k in enumerate(latents):
    one = functools.partial(train.train_step, model=model, tx=tx, likelihood=likelihood,
                            latent_width=k)
    if groups == 1:  # the packed state has no groups axis then (see StepLayout)
      st, m = one(state[j], jax.tree.map(lambda a: a[0], batch_G))
      m = jax.tree.map(lambda a: a[None], m)
    else:
      st, m = jax.vmap(one)(state[j], batch_G)
    parts.append(st)
    metrics.append(m)
  return tuple(parts), _restack(metrics, groups)


# by_latent compiles at most this many models into one program (see `ChunkedStep`).
MODELS_PER_PROGRAM = 5


class ChunkedStep:
  """by_latent's step: one compiled program per chunk of latent sizes, on CPU lanes.

  Why chunks: on XLA:CPU one program holding many models runs each model
  slower than a small one (20 latent sizes: 115 GFLOP/s as one program, 132 as
  four programs of 5; docs/benchmarks.md). Why lanes: XLA:CPU runs one
  device's programs one after another, and an LSTM scan uses one core; chunk c
  runs on `devices[c]` (round-robin over `sharding.cpu_lanes`), so programs on
  different lanes run at the same time and fill the idle cores. Each chunk's
  state stays on its lane between steps (placed there on first use); inputs are
  copied to each lane once and reused while the caller passes the same arrays.

  Takes and returns the packed state (`StepLayout`); metrics are [models] in
  table order, on the first lane. Like a jitted function it can be
  `lower(...).compile()`d ahead of time.
  """

  def __init__(self, fns, chunks: list[tuple[int, int]], groups: int, devices: list):
    self.fns, self.chunks, self.groups, self.devices = fns, chunks, groups, devices
    self.lanes = len(set(devices))
    self._merge = jax.jit(functools.partial(_restack, groups=groups))  # chunks -> [models]
    self._placed: dict[tuple[Any, int], tuple[Any, Any]] = {}  # (lane, arg) -> (source, copy)

  def _state_on(self, c: int, part):
    dev = self.devices[c]
    return part if jax.tree.leaves(part)[0].devices() == {dev} else jax.device_put(part, dev)

  def _args_on(self, c: int, args) -> list:
    dev, out = self.devices[c], []
    for i, a in enumerate(args):
      if not (isinstance(a, jax.Array) and a.devices() == {dev}):
        src, copy = self._placed.get((dev, i), (None, None))
        if src is not a:
          copy = jax.device_put(a, dev)
          self._placed[(dev, i)] = (a, copy)
        a = copy
      out.append(a)
    return out

  def __call__(self, state, *args):
    parts, metrics = [], []
    for c, (fn, (a, b)) in enumerate(zip(self.fns, self.chunks)):
      p, m = fn(self._state_on(c, state[a:b]), *self._args_on(c, args))
      parts.extend(p)
      metrics.append(m)
    home = self.devices[0]
    return tuple(parts), self._merge([jax.device_put(m, home) for m in metrics])

  def lower(self, state, *args):
    outer = self

    class Lowered:
      def compile(self) -> "ChunkedStep":
        return ChunkedStep([fn.lower(outer._state_on(c, state[a:b]), *outer._args_on(c, args))
                            .compile() for c, (fn, (a, b)) in enumerate(zip(outer.fns, outer.chunks))],
                           outer.chunks, outer.groups, outer.devices)
    return Lowered()


def make_step_fn(model, tx, likelihood: str, mesh, *, t_train: int, window: int, batch_size: int,
                 mix_layers: bool = False, table: ModelTable | None = None,
                 batching: str = "vmap", lanes: list | None = None):
  """`sweep_step` jitted for `mesh`: state donated, state and metrics sharded on the models axis.

  `batching` (see `resolve_batching`): "by_latent" needs the `table`, and
  returns a `ChunkedStep` that takes and returns the state in
  `StepLayout(model, table, batching, mesh)`'s packed layout, its chunks spread
  over `lanes` (default `sharding.cpu_lanes(mesh)`; `[device]` for none).
  """
  by_model = sharding.models_sharding(mesh)
  batching = resolve_batching(batching, mesh)
  step = functools.partial(sweep_step, model=model, tx=tx, likelihood=likelihood, t_train=t_train,
                           window=window, batch_size=batch_size, mix_layers=mix_layers,
                           batch_sharding=sharding.batch_sharding(mesh))
  if batching != "by_latent":
    return jax.jit(step, donate_argnums=0, out_shardings=(by_model, by_model))
  latents, groups = latent_buckets(table)
  num_l = len(latents)
  lanes = sharding.cpu_lanes(mesh) if lanes is None else list(lanes)
  # At most MODELS_PER_PROGRAM models per program, and enough programs to use every lane.
  per = max(1, min(MODELS_PER_PROGRAM // groups, -(-num_l // len(lanes))))
  chunks = [(a, min(a + per, num_l)) for a in range(0, num_l, per)]
  devices = [lanes[c % len(lanes)] for c in range(len(chunks))]

  def chunk_step(a, b, state, x_LTN, mask_LN, layer_M, seed_M, step_i):
    cols = lambda v: v.reshape(groups, num_l)[:, a:b].reshape(-1)
    return step(state, x_LTN, mask_LN, cols(layer_M), cols(seed_M), step_i,
                buckets=(latents[a:b], groups))

  # The packed state may hold scalars, so each chunk's lives whole on its one device.
  fns = [jax.jit(functools.partial(chunk_step, a, b), donate_argnums=0,
                 out_shardings=jax.sharding.SingleDeviceSharding(dev))
         for (a, b), dev in zip(chunks, devices)]
  return ChunkedStep(fns, chunks, groups, devices)


def sweep_eval(state: train.TrainState, valid_LVTN: jax.Array, mask_LN: jax.Array,
               layer_M: jax.Array, *, model, likelihood: str) -> dict[str, jax.Array]:
  """Quick held-out metrics [models] on all validation windows of each model's layer."""
  ev = functools.partial(train.eval_step, model=model, likelihood=likelihood)
  return jax.vmap(lambda p, k, l: ev(p, k, valid_LVTN[l], mask_LN[l]))(
      state.params, state.latent, layer_M)


def _fmt_time(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


NAN_POLICIES = ("freeze", "stop", "drop_neurons")


@dataclasses.dataclass
class SweepOutput:
  """A sweep's state at its last evaluation: what each model is, and per-model metrics."""

  state: train.TrainState
  table: ModelTable
  train_loss: np.ndarray   # [models], mean over the last logging interval
  valid: dict[str, np.ndarray]  # [models] each
  step: int                # the step of `valid`
  seconds: float
  compile_seconds: float
  complete: bool = True
  stopped: str | None = None  # why training stopped early (--nan_policy=stop)
  diverged_at: np.ndarray | None = None  # [models] host copy of state.diverged_at


def run_sweep(dataset: data_lib.Dataset, cfg: SweepConfig, *,
              log: Callable[[str], None] = print,
              on_metrics: Callable[[int, dict[str, np.ndarray]], None] | None = None,
              on_eval: Callable[[SweepOutput], None] | None = None,
              shared: bool = False, checkpointer=None, checkpoint_every: int = 0,
              nan_policy: str = "freeze", mesh=None, batching: str = "auto") -> SweepOutput:
  """Trains every (layer, latent, seed) model on `dataset` in one batched computation.

  Args:
    dataset: activity [layers, time, neurons].
    cfg: the sweep's settings.
    log: receives progress lines.
    on_metrics: called at each log step with {"train/loss", "valid/mse", ...} [models].
    on_eval: called at each log step with the sweep so far (complete=False
      until the last step), e.g. to write partial results.
    shared: train one model per (latent, seed) on windows of all layers
      (table.layer is then 0 for every model, and no neuron is held out).
    checkpointer: a `checkpoint.Checkpointer`; training resumes from its
      latest step and saves every `checkpoint_every` steps and at the end.
    nan_policy: "freeze" (default) freezes a model whose loss or gradient
      turns non-finite and continues the others; "stop" stops the sweep.
    mesh: a `sharding.make_mesh` mesh (default: every device on the models
      axis); the models are padded to a multiple of its models axis.
  Returns:
    The final state (real models only, on the host) and per-model metrics.
  """
  t_train = check_config(cfg, dataset)
  if nan_policy not in NAN_POLICIES:
    raise UserError(f"unknown --nan_policy={nan_policy!r}: choose one of {', '.join(NAN_POLICIES)}")
  real_table = ModelTable.build(1 if shared else dataset.num_layers, cfg.latents, cfg.seeds)
  n_real = len(real_table)
  mesh = sharding.make_mesh("auto") if mesh is None else mesh
  table = real_table.padded(sharding.padded_size(n_real, mesh))
  by_model, rep = sharding.models_sharding(mesh), sharding.replicated(mesh)
  model = make_model(cfg, dataset.num_neurons)
  tx = train.make_optimizer(clip_norm=cfg.clip_norm)
  lik = likelihood(cfg, dataset)
  mask_LN = input_masks(cfg, dataset)
  valid_LVTN = data_lib.valid_windows(dataset.x_LTN, t_train, cfg.window)
  if shared:  # one "layer" holding every layer's validation windows; encoder sees all neurons.
    valid_LVTN = valid_LVTN.reshape(1, -1, *valid_LVTN.shape[2:])
    mask_LN = np.ones((1, dataset.num_neurons), np.float32)
  x_LTN, mask_LN, valid_LVTN = (sharding.put(a, rep) for a in (dataset.x_LTN, mask_LN, valid_LVTN))
  layer_M, seed_M = sharding.put(table.layer, by_model), sharding.put(table.seed, by_model)

  state = init_sweep(cfg, table, dataset.num_neurons, out_sharding=by_model)
  trim = jax.jit(lambda tree: jax.tree.map(lambda a: a[:n_real], tree))
  first_step, loss_sum, loss_count = 0, jnp.zeros(len(table), jnp.float32), 0
  if checkpointer is not None and checkpointer.latest_step() is not None:
    first_step = checkpointer.latest_step()
    restored, aux = checkpointer.restore(first_step, trim(state))
    state = jax.jit(lambda full, r: jax.tree.map(lambda a, b: a.at[:n_real].set(b), full, r),
                    out_shardings=by_model, donate_argnums=0)(state, restored)
    loss_sum = loss_sum.at[:n_real].set(jnp.asarray(aux["loss_sum"], jnp.float32))
    loss_count = int(aux["loss_count"])
    log(f"resumed from the checkpoint at step {first_step}")
  layout = StepLayout(model, table, batching, mesh)
  step_fn = make_step_fn(model, tx, lik, mesh, t_train=t_train, window=cfg.window,
                         batch_size=cfg.batch_size, mix_layers=shared, table=table,
                         batching=batching)
  eval_fn = jax.jit(functools.partial(sweep_eval, model=model, likelihood=lik))
  what = "one shared model of all layers" if shared else f"{dataset.num_layers} layers"
  lanes = getattr(step_fn, "lanes", 1)
  lanes_note = f" on {lanes} CPU lanes" if lanes > 1 else ""
  pad_note = f" + {len(table) - n_real} inert padding" if len(table) > n_real else ""
  log(f"sweep: {n_real} models{pad_note} ({what} x {len(cfg.latents)} latents x "
      f"{cfg.seeds} seeds), {dataset.num_neurons} neurons, {dataset.num_time} time bins "
      f"({t_train} train / {dataset.num_time - t_train} valid), {cfg.steps} steps on "
      f"{mesh.devices.size} {jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}, "
      f"batching {layout.batching}{lanes_note}")
  t0 = time.perf_counter()
  eval_fn = eval_fn.lower(state, valid_LVTN, mask_LN, layer_M).compile()
  state = layout.pack(state)  # the step's layout from here on; unpack for eval and checkpoints
  step_fn = step_fn.lower(state, x_LTN, mask_LN, layer_M, seed_M, jnp.int32(0)).compile()
  compile_seconds = time.perf_counter() - t0
  log(f"compiled in {compile_seconds:.1f}s")

  def describe(i: int) -> str:
    layer = "all" if shared else dataset.layer_names[table.layer[i]]
    return f"layer {layer}, latent {table.latent[i]}, seed {table.seed[i]}"

  # Progress ranks models by co-smoothing error when neurons are held out (the metric the
  # dimension estimate uses), else by the held-out loss.
  cosmooth = cfg.heldout_neurons > 0 and not shared
  rank_key = "valid/cosmooth_mse" if cosmooth else "valid/loss"

  def snapshot(state, mean_loss_M, step, complete, stopped) -> SweepOutput:
    """Evaluates every model now: host copies of its metrics [real models]."""
    valid = {k: np.asarray(v)[:n_real] for k, v in
             sharding.gather(eval_fn(state, valid_LVTN, mask_LN, layer_M)).items()
             if k != "valid/cosmooth_mse" or cosmooth}
    return SweepOutput(state=state, table=real_table,
                       train_loss=np.asarray(sharding.gather(mean_loss_M))[:n_real], valid=valid,
                       step=step, seconds=time.perf_counter() - start,
                       compile_seconds=compile_seconds, complete=complete, stopped=stopped,
                       diverged_at=np.asarray(sharding.gather(state.diverged_at))[:n_real])

  out = None
  start = last = time.perf_counter()
  last_step = first_step
  for step in range(first_step + 1, cfg.steps + 1):
    state, metrics = step_fn(state, x_LTN, mask_LN, layer_M, seed_M, jnp.int32(step - 1))
    loss_sum, loss_count = loss_sum + metrics["train/loss"], loss_count + 1
    stopped = None
    if nan_policy == "stop":
      diverged_at = np.asarray(sharding.gather(layout.diverged_at(state)))[:n_real]
      bad = np.flatnonzero(diverged_at >= 0)
      if len(bad):
        stopped = (f"{describe(bad[0])} diverged (non-finite loss or gradient) at step "
                   f"{int(diverged_at[bad[0]])}; --nan_policy=stop stopped the sweep")
    log_now = step % cfg.log_every == 0 or step == cfg.steps or stopped
    save_now = checkpointer is not None and (stopped or step == cfg.steps or
                                             (checkpoint_every and step % checkpoint_every == 0))
    padded = layout.unpack(state) if log_now or save_now else None
    if log_now:
      out = snapshot(padded, loss_sum / max(loss_count, 1), step,
                     complete=step == cfg.steps and not stopped, stopped=stopped)
      loss_sum, loss_count = jnp.zeros_like(loss_sum), 0
      now = time.perf_counter()
      rate = (step - last_step) / (now - last)
      last, last_step = now, step
      if on_metrics is not None:
        on_metrics(step, {"train/loss": out.train_loss, **out.valid})
      ok = np.isfinite(out.valid["valid/loss"])
      best = int(np.argmin(np.where(ok, out.valid[rank_key], np.inf))) if ok.any() else 0
      if on_eval is not None and not out.complete:
        on_eval(out)
      log(f"step {step}/{cfg.steps}  {rate:.2f} steps/s  ETA {_fmt_time((cfg.steps - step) / rate)}  "
          f"best {rank_key.replace('valid/', 'held-out ')} {out.valid[rank_key][best]:.4g} "
          f"({describe(best)})")
    if save_now:
      checkpointer.save(step, trim(padded),
                        {"loss_sum": np.asarray(sharding.gather(loss_sum))[:n_real].tolist(),
                         "loss_count": loss_count})
    if stopped:
      log(f"stopped: {stopped}")
      break
  if out is None:  # resumed at (or past) the last step: evaluate once.
    out = snapshot(layout.unpack(state), loss_sum / max(loss_count, 1), first_step,
                   complete=True, stopped=None)
    out.seconds = 0.0
  final = sharding.gather(trim(out.state))
  return dataclasses.replace(out, state=jax.tree.map(jnp.asarray, final))


def results_dict(dataset: data_lib.Dataset, cfg: SweepConfig, out: SweepOutput) -> dict[str, Any]:
  """The content of results.json (see docs: results schema)."""
  diverged = out.diverged_at if out.diverged_at is not None else np.asarray(out.state.diverged_at)
  entries = []
  for i in range(len(out.table)):
    entries.append({
        "layer": dataset.layer_names[out.table.layer[i]],
        "latent": int(out.table.latent[i]),
        "seed": int(out.table.seed[i]),
        "train_loss": _num(out.train_loss[i]),
        "valid_mse": _num(out.valid["valid/mse"][i]),
        "valid_loss": _num(out.valid["valid/loss"][i]),
        "diverged_at_step": int(diverged[i]) if diverged[i] >= 0 else None,
    })
  res = {
      "dataset": dataset.name,
      "latents": list(map(int, cfg.latents)),
      "layers": list(dataset.layer_names),
      "seeds": list(range(cfg.seeds)),
      "steps": cfg.steps,
      "decoder": cfg.decoder,
      "likelihood": likelihood(cfg, dataset),
      "heldout_neurons": cfg.heldout_neurons,
      "config": dataclasses.asdict(cfg),
      "data": {"num_time": dataset.num_time, "num_neurons": dataset.num_neurons, **dataset.meta},
      "models": entries,
      "seconds": round(out.seconds, 2),
      "compile_seconds": round(out.compile_seconds, 2),
      "complete": out.complete,
      "evaluated_step": out.step,
  }
  if out.stopped:
    res["stopped"] = out.stopped
  if dataset.true_latent is not None:
    res["true_latent"] = dict(dataset.true_latent)
  return res


def _num(x) -> float | None:
  """JSON-safe float: NaN/Inf become null."""
  x = float(x)
  return x if np.isfinite(x) else None
