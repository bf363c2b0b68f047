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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nmas_jax import models
from nmas_jax.config import Settings
from nmas_jax.data import splits
from nmas_jax.training import hooks as hooks_lib
from nmas_jax.training import sharding, stepper, train
from nmas_jax.training.selection import Selection, _padded
from nmas_jax.training.table import ModelTable, init_states


@dataclasses.dataclass
class SweepOutput:
  """A sweep's state at an evaluation: what each model is, and per-model metrics [real models]."""

  state: train.TrainState
  table: ModelTable
  train_loss: np.ndarray  # mean over the last logging interval
  valid: dict[str, np.ndarray]
  step: int  # the step of `valid`
  seconds: float
  compile_seconds: float
  complete: bool = True
  stopped: str | None = None  # why training stopped early (--nan_policy=stop)
  diverged_at: np.ndarray | None = None  # host copy of state.diverged_at
  preempted: int | None = None  # the signal that stopped training, if one did
  best_step: np.ndarray | None = None  # step of each model's best evaluation (its `state`)
  converged: np.ndarray | None = None  # bool: no longer improving in the last fifth


@dataclasses.dataclass
class Built:
  """Everything the loop needs, made in one pass: prepared data on the mesh, models, stepper."""

  prep: splits.Prepared
  cfg: Settings
  table: ModelTable  # padded to the mesh; the first `n_real` models are real
  n_real: int
  mesh: Any
  placed: splits.Placed
  model: Any
  tx: optax.GradientTransformation  # the one optimizer, from the settings
  stepper: stepper.Stepper

  def init_states(self) -> train.TrainState:
    """Every model's initial state [padded models], sharded on the mesh's models axis."""
    return init_states(
      self.cfg,
      self.table,
      self.prep.num_neurons,
      self.tx,
      out_sharding=sharding.models_sharding(self.mesh),
      readout_bias_LN=self.prep.null_link_LN(),
    )

  def describe(self) -> str:
    cfg = self.cfg
    ds, prep = self.prep.dataset, self.prep
    what = "one shared model of all layers" if prep.shared else f"{ds.num_layers} layers"
    pad = len(self.table) - self.n_real
    n = prep.stride  # bins per trial, 1 for a continuous recording
    unit = f"trials of {n} bins" if ds.trial_length else "time bins"
    blocks = (
      f"{ds.num_time // n} {unit} ({prep.t_train // n} train / "
      f"{(prep.t_valid - prep.t_train) // n} validation / {(ds.num_time - prep.t_valid) // n} "
      "test)"
    )
    grid = (
      f"{len(np.unique(self.table.bands, axis=0))} band combinations"
      if self.table.bands.shape[1]
      else f"{len(cfg.latents)} latents"
    )
    folds = f" x {cfg.neuron_folds} neuron folds" if cfg.neuron_folds else ""
    counts = (
      f" x {len(np.unique(self.table.count))} neuron counts" if np.any(self.table.count) else ""
    )
    return (
      f"sweep: {self.n_real} models{f' + {pad} inert padding' if pad else ''} ({what}{counts} x "
      f"{grid} x {cfg.seeds} seeds{folds}), {ds.num_neurons} neurons, {blocks}, "
      f"{cfg.steps} steps on {self.mesh.devices.size} {jax.devices()[0].platform} device(s), "
      f"mesh {dict(self.mesh.shape)}, batching {self.stepper.description}"
    )


def build(
  prep: splits.Prepared,
  cfg: Settings,
  *,
  mesh=None,
  batching: str = "auto",
  lanes: list | None = None,
) -> Built:
  """Places the prepared data, then makes the models and their stepper (see `run_sweep`)."""
  mesh = sharding.make_mesh("auto") if mesh is None else mesh
  real = ModelTable.for_sweep(prep, cfg)
  table = real.padded(sharding.padded_size(len(real), mesh))
  placed = prep.place(mesh, table.layer, table.seed, table.count)
  model = models.make_model(cfg, prep.num_neurons)
  tx = train.optimizer_for(cfg)
  step = stepper.make_stepper(batching, model, tx, prep, placed, table, mesh, lanes)
  return Built(prep, cfg, table, len(real), mesh, placed, model, tx, step)


def sweep_eval(
  state: train.TrainState,
  valid_LVTN: jax.Array,
  mask_MN: jax.Array,
  target_MN: jax.Array | None,
  layer_M: jax.Array,
  *,
  model,
  likelihood: str,
) -> dict[str, jax.Array]:
  """Quick held-out metrics [models] on all validation windows of each model's layer."""
  ev = functools.partial(train.eval_step, model=model, likelihood=likelihood)
  if target_MN is None:
    return jax.vmap(lambda p, k, m, l: ev(p, k, valid_LVTN[l], m))(
      state.params, state.latent, mask_MN, layer_M
    )
  return jax.vmap(lambda p, k, m, t, l: ev(p, k, valid_LVTN[l], m, t))(
    state.params, state.latent, mask_MN, target_MN, layer_M
  )


class Loop:
  """One run of the loop, as hooks see it after each step.

  `step` has just been taken; `state()` and `evaluation()` are computed at
  most once per step, on the first hook that asks (`evaluation()` only when
  due: every `log_every` steps and at the end). Each regular evaluation also
  keeps every model's best state so far (`Selection`), which the run
  returns. A hook ends the run with `stop`.
  """

  def __init__(self, b: Built, cfg: Settings, start: Start):
    self.built, self.cfg = b, cfg
    self.first_step = self.step = start.step
    self.loss_sum_M, self.loss_count = start.loss_sum_M, start.loss_count
    self.best_state, self.selection = start.best_state, start.selection
    self.select_key = "valid/cosmooth_loss" if b.prep.cosmooth else "valid/loss"
    self.stopped: str | None = None
    self.preempted: int | None = None  # the signal that ended the run, if one did
    self._cache: dict[str, Any] = {}
    self._trim = jax.jit(lambda tree: jax.tree.map(lambda a: a[: b.n_real], tree))
    self._keep = jax.jit(
      lambda better_M, new, old: jax.tree.map(
        lambda n, o: jnp.where(better_M.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old
      )
    )
    self._real_table = ModelTable(*(a[: b.n_real] for a in dataclasses.astuple(b.table)))
    t0 = time.perf_counter()
    evaluate = functools.partial(sweep_eval, model=b.model, likelihood=b.prep.likelihood)
    self._eval_args = (b.placed.valid_LVTN, b.placed.mask_MN, b.placed.target_MN, b.placed.layer_M)
    self._eval = jax.jit(evaluate).lower(start.state, *self._eval_args).compile()
    self.carry = b.stepper.pack(start.state)  # the stepper's layout from here on
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

  def preempt(self, signum: int) -> None:
    """Ends the run here because of a signal; this step's evaluation is not a regular one."""
    self.preempted = signum
    self.stop(f"preempted at step {self.step}; rerun the same command to resume")

  @property
  def regular(self) -> bool:
    """Whether this step's evaluation is one an uninterrupted run makes too."""
    ended = self.step >= self.cfg.steps or (self.stopped is not None and self.preempted is None)
    return ended or self.step % self.cfg.log_every == 0

  def state(self) -> train.TrainState:
    """Every model's padded state [models] now."""
    if "state" not in self._cache:
      self._cache["state"] = self.built.stepper.unpack(self.carry)
    return self._cache["state"]

  def checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state tree, JSON aux) that let a later run resume exactly here (real models only)."""
    n = self.built.n_real
    sel = self.selection.real(n)
    return (
      {"state": self._trim(self.state()), "best": self._trim(self.best_state)},
      {
        "loss_sum": np.asarray(sharding.gather(self.loss_sum_M))[:n].tolist(),
        "loss_count": self.loss_count,
        "selection": sel.to_json(),
      },
    )

  def _valid(self, state) -> dict[str, np.ndarray]:
    n, cosmooth = self.built.n_real, self.built.prep.cosmooth
    return {
      k: np.asarray(v)[:n]
      for k, v in sharding.gather(self._eval(state, *self._eval_args)).items()
      if not k.startswith("valid/cosmooth") or cosmooth
    }

  def evaluation(self, force: bool = False) -> SweepOutput | None:
    """Every model evaluated now (None when not due, unless `force`).

    A due evaluation is regular (`regular`): it updates each model's best state
    and restarts the training-loss average. A forced one (at a preemption, or
    the run's last output) changes neither, so a preempted and resumed run
    selects and reports exactly what an uninterrupted one does.
    """
    regular = self.regular
    if "eval" not in self._cache and (force or regular):
      state, n = self.state(), self.built.n_real
      valid = self._valid(state)
      if regular and self.step > self.first_step:
        better = self.selection.update(
          self.step, _padded(valid[self.select_key], len(self.built.table))
        )
        self.best_state = self._keep(
          sharding.put(better, sharding.models_sharding(self.built.mesh)), state, self.best_state
        )
      mean_loss = self.loss_sum_M / max(self.loss_count, 1)
      self._cache["eval"] = SweepOutput(
        state=state,
        table=self._real_table,
        train_loss=np.asarray(sharding.gather(mean_loss))[:n],
        valid=valid,
        step=self.step,
        seconds=time.perf_counter() - self.start,
        compile_seconds=self.compile_seconds,
        complete=self.step >= self.cfg.steps and not self.stopped,
        stopped=self.stopped,
        diverged_at=np.asarray(sharding.gather(state.diverged_at))[:n],
        preempted=self.preempted,
      )
      if regular:
        self.loss_sum_M, self.loss_count = jnp.zeros_like(self.loss_sum_M), 0
    return self._cache.get("eval")

  def best(self) -> SweepOutput:
    """The last evaluation, with each model's best state (on the host) and its metrics; the state's
    `diverged_at` is the last one (a model that diverged after its best step stays flagged)."""
    last, n = self.evaluation(force=True), self.built.n_real
    best = self.best_state.replace(diverged_at=self.state().diverged_at)
    return dataclasses.replace(
      last,
      state=jax.tree.map(jnp.asarray, sharding.gather(self._trim(best))),
      valid=self._valid(best),
      best_step=self.selection.step[:n].copy(),
      converged=self.selection.converged(self.cfg.steps)[:n],
    )


@dataclasses.dataclass
class Start:
  """Where a run starts: padded state and best state [models], step, loss sums, selection."""

  state: train.TrainState
  best_state: train.TrainState
  step: int
  loss_sum_M: jax.Array
  loss_count: int
  selection: Selection


def _start(b: Built, checkpointer, init_state, log) -> Start:
  """From the checkpointer's latest step, from `init_state` (real models), or from an init."""
  by_model = sharding.models_sharding(b.mesh)
  state, m = b.init_states(), len(b.table)
  into = jax.jit(
    lambda full, r: jax.tree.map(lambda a, x: a.at[: b.n_real].set(x), full, r),
    out_shardings=by_model,
  )
  real = jax.tree.map(lambda a: a[: b.n_real], state)
  found = (
    None
    if init_state is not None or checkpointer is None
    else (checkpointer.restore_latest({"state": real, "best": real}))
  )
  if found is not None:
    step, tree, aux = found
    log(f"resumed from the checkpoint at step {step}")
    loss_sum = (
      jnp.zeros(m, jnp.float32).at[: b.n_real].set(jnp.asarray(aux["loss_sum"], jnp.float32))
    )
    return Start(
      into(state, tree["state"]),
      into(state, tree["best"]),
      step,
      loss_sum,
      int(aux["loss_count"]),
      Selection.from_json(aux["selection"], m),
    )
  if init_state is not None:
    state = into(state, init_state)
  best = jax.tree.map(jnp.copy, state)  # the step donates `state`
  return Start(state, best, 0, jnp.zeros(m, jnp.float32), 0, Selection.fresh(m))


def run_sweep(
  prep: splits.Prepared,
  cfg: Settings,
  *,
  hooks: Sequence[Callable[[Loop], None]] = (),
  checkpointer=None,
  checkpoint_every: int = 0,
  init_state: train.TrainState | None = None,
  nan_policy: str = "freeze",
  mesh=None,
  batching: str = "auto",
  lanes: list | None = None,
  log: Callable[[str], None] = print,
) -> SweepOutput:
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
    The last evaluation, with each real model's best state (lowest held-out
    validation loss over the regular evaluations) on the host and its metrics.
  """
  b = build(prep, cfg, mesh=mesh, batching=batching, lanes=lanes)
  start = _start(b, checkpointer, init_state, log)
  log(b.describe())
  loop = Loop(b, cfg, start)
  log(f"compiled in {loop.compile_seconds:.1f}s")
  names = None if prep.shared else prep.dataset.layer_names
  preemption = hooks_lib.Preemption()
  every = [preemption] + ([hooks_lib.NanStop(names)] if nan_policy == "stop" else [])
  every += [*hooks, hooks_lib.Progress(log, names)]
  every += [hooks_lib.Checkpoints(checkpointer, checkpoint_every)] if checkpointer else []
  with preemption:
    for step in range(start.step + 1, cfg.steps + 1):
      loop.advance(step)
      for hook in every:
        hook(loop)
      if loop.stopped:
        log(f"stopped: {loop.stopped}")
        break
  out = loop.best()
  if loop.step == start.step:  # resumed at (or past) the last step: nothing was trained
    out.seconds = 0.0
  return out
