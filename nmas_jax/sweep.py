"""A whole latent-size sweep as ONE batched computation: build once, then a short loop with hooks.

`build` goes through the data once (prepared and placed), then makes the
models and the stepper. `run_sweep` starts from a checkpoint, an
`init_state` or a fresh init, steps every model at once, and after each step
calls its hooks (`hooks`: NaN stop, progress, metrics, partial results,
checkpoints), which see the run through a `Loop`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import hooks as hooks_lib
from nmas_jax import models, sharding, splits, stepper, train
from nmas_jax.config import Settings
from nmas_jax.table import ModelTable, init_states


@dataclasses.dataclass
class SweepOutput:
  """A sweep's state at an evaluation: what each model is, and per-model metrics [real models]."""

  state: train.TrainState
  table: ModelTable
  train_loss: np.ndarray   # mean over the last logging interval
  valid: dict[str, np.ndarray]
  step: int                # the step of `valid`
  seconds: float
  compile_seconds: float
  complete: bool = True
  stopped: str | None = None  # why training stopped early (--nan_policy=stop)
  diverged_at: np.ndarray | None = None  # host copy of state.diverged_at


@dataclasses.dataclass
class Built:
  """Everything the loop needs, made in one pass: prepared data on the mesh, models, stepper."""

  prep: splits.Prepared
  cfg: Settings
  table: ModelTable        # padded to the mesh; the first `n_real` models are real
  n_real: int
  mesh: Any
  placed: splits.Placed
  model: Any
  stepper: stepper.Stepper

  def init_states(self) -> train.TrainState:
    """Every model's initial state [padded models], sharded on the mesh's models axis."""
    return init_states(self.cfg, self.table, self.prep.num_neurons,
                       out_sharding=sharding.models_sharding(self.mesh))

  def describe(self) -> str:
    cfg = self.cfg
    ds, prep = self.prep.dataset, self.prep
    what = "one shared model of all layers" if prep.shared else f"{ds.num_layers} layers"
    pad = len(self.table) - self.n_real
    return (f"sweep: {self.n_real} models{f' + {pad} inert padding' if pad else ''} ({what} x "
            f"{len(cfg.latents)} latents x {cfg.seeds} seeds), {ds.num_neurons} neurons, "
            f"{ds.num_time} time bins ({prep.t_train} train / {ds.num_time - prep.t_train} valid), "
            f"{cfg.steps} steps on {self.mesh.devices.size} {jax.devices()[0].platform} device(s), "
            f"mesh {dict(self.mesh.shape)}, batching {self.stepper.description}")


def build(prep: splits.Prepared, cfg: Settings, *, mesh=None, batching: str = "auto",
          lanes: list | None = None) -> Built:
  """Places the prepared data, then makes the models and their stepper (see `run_sweep`)."""
  mesh = sharding.make_mesh("auto") if mesh is None else mesh
  real = ModelTable.build(prep.model_layers, cfg.latents, cfg.seeds)
  table = real.padded(sharding.padded_size(len(real), mesh))
  placed = prep.place(mesh, table.layer, table.seed)
  model = models.make_model(cfg, prep.num_neurons)
  tx = train.make_optimizer(clip_norm=cfg.clip_norm)
  step = stepper.make_stepper(batching, model, tx, prep, placed, table, mesh, lanes)
  return Built(prep, cfg, table, len(real), mesh, placed, model, step)


def sweep_eval(state: train.TrainState, valid_LVTN: jax.Array, mask_LN: jax.Array,
               layer_M: jax.Array, *, model, likelihood: str) -> dict[str, jax.Array]:
  """Quick held-out metrics [models] on all validation windows of each model's layer."""
  ev = functools.partial(train.eval_step, model=model, likelihood=likelihood)
  return jax.vmap(lambda p, k, l: ev(p, k, valid_LVTN[l], mask_LN[l]))(
      state.params, state.latent, layer_M)


class Loop:
  """One run of the loop, as hooks see it after each step.

  `step` has just been taken; `state()` and `evaluation()` are computed at
  most once per step, on the first hook that asks (`evaluation()` only when
  due: every `log_every` steps and at the end). A hook ends the run with `stop`.
  """

  def __init__(self, b: Built, cfg: Settings, state: train.TrainState, first_step: int,
               loss_sum_M: jax.Array, loss_count: int):
    self.built, self.cfg = b, cfg
    self.first_step = self.step = first_step
    self.loss_sum_M, self.loss_count = loss_sum_M, loss_count
    self.stopped: str | None = None
    self._cache: dict[str, Any] = {}
    self._trim = jax.jit(lambda tree: jax.tree.map(lambda a: a[:b.n_real], tree))
    self._real_table = ModelTable(*(a[:b.n_real] for a in dataclasses.astuple(b.table)))
    t0 = time.perf_counter()
    evaluate = functools.partial(sweep_eval, model=b.model, likelihood=b.prep.likelihood)
    self._eval_args = (b.placed.valid_LVTN, b.placed.mask_LN, b.placed.layer_M)
    self._eval = jax.jit(evaluate).lower(state, *self._eval_args).compile()
    self.carry = b.stepper.pack(state)  # the stepper's layout from here on
    b.stepper.compile(self.carry)
    self.compile_seconds = time.perf_counter() - t0
    self.start = time.perf_counter()

  @property
  def final(self) -> bool:
    return self.step >= self.cfg.steps or self.stopped is not None

  def advance(self, step: int) -> None:
    """Takes training step `step` (1-based) for every model."""
    self.carry, metrics = self.built.stepper.step(self.carry, step - 1)
    self.step, self._cache = step, {}
    self.loss_sum_M, self.loss_count = self.loss_sum_M + metrics["train/loss"], self.loss_count + 1

  def stop(self, reason: str) -> None:
    self.stopped = reason

  def state(self) -> train.TrainState:
    """Every model's padded state [models] now."""
    if "state" not in self._cache:
      self._cache["state"] = self.built.stepper.unpack(self.carry)
    return self._cache["state"]

  def real_state(self) -> train.TrainState:
    """The real models' state (padding dropped), still on the devices."""
    return self._trim(self.state())

  def aux(self) -> dict[str, Any]:
    """What a checkpoint needs besides the state to resume exactly."""
    return {"loss_sum": np.asarray(sharding.gather(self.loss_sum_M))[:self.built.n_real].tolist(),
            "loss_count": self.loss_count}

  def evaluation(self, force: bool = False) -> SweepOutput | None:
    """Every model evaluated now (None when not due, unless `force`); resets the loss average."""
    if "eval" not in self._cache and (force or self.final or self.step % self.cfg.log_every == 0):
      n, cosmooth = self.built.n_real, self.built.prep.cosmooth
      state = self.state()
      valid = {k: np.asarray(v)[:n] for k, v in
               sharding.gather(self._eval(state, *self._eval_args)).items()
               if k != "valid/cosmooth_mse" or cosmooth}
      mean_loss = self.loss_sum_M / max(self.loss_count, 1)
      self._cache["eval"] = SweepOutput(
          state=state, table=self._real_table,
          train_loss=np.asarray(sharding.gather(mean_loss))[:n], valid=valid, step=self.step,
          seconds=time.perf_counter() - self.start, compile_seconds=self.compile_seconds,
          complete=self.step >= self.cfg.steps and not self.stopped, stopped=self.stopped,
          diverged_at=np.asarray(sharding.gather(state.diverged_at))[:n])
      self.loss_sum_M, self.loss_count = jnp.zeros_like(self.loss_sum_M), 0
    return self._cache.get("eval")


def _start(b: Built, cfg: Settings, checkpointer, init_state, log) -> tuple[Any, int, Any, int]:
  """(padded state, first step, loss sum, loss count): from a checkpoint, `init_state`, or init."""
  by_model = sharding.models_sharding(b.mesh)
  state = b.init_states()
  loss_sum, first_step, loss_count = jnp.zeros(len(b.table), jnp.float32), 0, 0
  real, aux = init_state, None
  if init_state is None and checkpointer is not None and checkpointer.latest_step() is not None:
    first_step = checkpointer.latest_step()
    real, aux = checkpointer.restore(first_step, jax.tree.map(lambda a: a[:b.n_real], state))
    log(f"resumed from the checkpoint at step {first_step}")
  if real is not None:
    state = jax.jit(lambda full, r: jax.tree.map(lambda a, x: a.at[:b.n_real].set(x), full, r),
                    out_shardings=by_model, donate_argnums=0)(state, real)
  if aux is not None:
    loss_sum = loss_sum.at[:b.n_real].set(jnp.asarray(aux["loss_sum"], jnp.float32))
    loss_count = int(aux["loss_count"])
  return state, first_step, loss_sum, loss_count


def run_sweep(prep: splits.Prepared, cfg: Settings, *, hooks: Sequence[Callable[[Loop], None]] = (),
              checkpointer=None, checkpoint_every: int = 0, init_state: train.TrainState | None = None,
              nan_policy: str = "freeze", mesh=None, batching: str = "auto",
              lanes: list | None = None, log: Callable[[str], None] = print) -> SweepOutput:
  """Trains every (layer, latent, seed) model of `prep` in one batched computation.

  Args:
    prep, cfg: the data (`splits.prepare(dataset, cfg, shared)`) and the sweep's settings; with
      `prep.shared`, one model per (latent, seed) learns windows of every layer.
    hooks: called with the `Loop` after every step, after the NaN stop and
      before the progress line and the checkpoint (e.g. `hooks.Metrics`).
    checkpointer: a `checkpoint.Checkpointer`: resume from its latest step,
      save every `checkpoint_every` steps (0: only) at the end.
    init_state: the real models' initial state [models] instead of an init.
    nan_policy: "freeze" (a diverging model is frozen, the others go on) or "stop".
    mesh, batching, lanes: where and how the step runs (`build`).
  Returns:
    The last evaluation, with the real models' final state on the host.
  """
  b = build(prep, cfg, mesh=mesh, batching=batching, lanes=lanes)
  state, first_step, loss_sum, loss_count = _start(b, cfg, checkpointer, init_state, log)
  log(b.describe())
  loop = Loop(b, cfg, state, first_step, loss_sum, loss_count)
  log(f"compiled in {loop.compile_seconds:.1f}s")
  names = None if prep.shared else prep.dataset.layer_names
  every = [hooks_lib.NanStop(names)] if nan_policy == "stop" else []
  every += [*hooks, hooks_lib.Progress(log, names)]
  every += [hooks_lib.Checkpoints(checkpointer, checkpoint_every)] if checkpointer else []
  for step in range(first_step + 1, cfg.steps + 1):
    loop.advance(step)
    for hook in every:
      hook(loop)
    if loop.stopped:
      log(f"stopped: {loop.stopped}")
      break
  out = loop.evaluation(force=True)
  if loop.step == first_step:  # resumed at (or past) the last step: nothing was trained
    out.seconds = 0.0
  return dataclasses.replace(out, state=jax.tree.map(jnp.asarray, sharding.gather(loop.real_state())))
