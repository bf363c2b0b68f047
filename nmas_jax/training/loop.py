"""The sweep's loop as hooks see it (`Loop`), where it starts (`start`), and what it returns
(`SweepOutput`); `sweep.run_sweep` drives it."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax.config import Settings
from nmas_jax.training import population, sharding, train
from nmas_jax.training.selection import Selection, StopRule, _padded
from nmas_jax.training.table import ModelTable


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
  converged: np.ndarray | None = None  # bool: stopped by the `StopRule`, not by the cap
  stopped_at: np.ndarray | None = None  # step each model stopped training (rule or cap)
  population: dict[str, Any] | None = None  # --population: `population.summary`

  def take(self, index: np.ndarray) -> SweepOutput:
    """The models at `index` (every per-model field)."""
    pick = lambda a: None if a is None else np.asarray(a)[index]
    return dataclasses.replace(
      self,
      state=sharding.take(self.state, index),
      table=self.table.take(index),
      train_loss=pick(self.train_loss),
      valid={k: pick(v) for k, v in self.valid.items()},
      diverged_at=pick(self.diverged_at),
      best_step=pick(self.best_step),
      converged=pick(self.converged),
      stopped_at=pick(self.stopped_at),
    )


def sweep_null(
  valid_LVTN: jax.Array,
  null_LN: jax.Array,
  mask_MN: jax.Array,
  target_MN: jax.Array | None,
  layer_M: jax.Array,
  *,
  likelihood: str,
) -> dict[str, jax.Array]:
  """`sweep_eval`'s metrics [models] of the null prediction (each neuron's training mean)."""
  ev = functools.partial(train.null_eval, likelihood=likelihood)
  null = lambda l: null_LN[l % null_LN.shape[0]]  # one row for a shared model
  if target_MN is None:
    return jax.vmap(lambda m, l: ev(null(l), valid_LVTN[l], m))(mask_MN, layer_M)
  return jax.vmap(lambda m, t, l: ev(null(l), valid_LVTN[l], m, t))(mask_MN, target_MN, layer_M)


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
  most once per step (`evaluation()` only when due: every `log_every` steps
  and at the end, before any hook). Each regular evaluation also keeps every
  model's best state so far (`Selection`), which the run returns, and applies
  the `StopRule`: it cuts a model's learning rate, or stops the model (its
  best state is final, and the by-latent stepper skips a program whose models
  have all stopped); the run is `done` when every model has stopped. A hook
  ends the run with `stop`.
  """

  def __init__(self, b, cfg: Settings, start: Start):
    self.built, self.cfg = b, cfg
    self.first_step = self.step = start.step
    self.loss_sum_M, self.loss_count = start.loss_sum_M, start.loss_count
    self.best_state, self.selection = start.best_state, start.selection
    self.select_key = "valid/cosmooth_loss" if b.prep.cosmooth else "valid/loss"
    self.rule = StopRule.from_settings(cfg)
    # One gain reference per group: a layer at a neuron count, with one decoder.
    pairs = np.column_stack([b.table.layer, b.table.count, b.table.decoder])
    self._group_M = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)
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
    if np.isnan(self.selection.null).all():  # a fresh start: the null's score, once
      null = functools.partial(sweep_null, likelihood=b.prep.likelihood)
      args = (b.placed.valid_LVTN, b.prep.null_link_LN(), *self._eval_args[1:])
      loss = np.asarray(sharding.gather(jax.jit(null)(*args)[self.select_key]))
      self.selection.null = _padded(loss[: b.n_real], len(b.table), np.nan)
    self.pbt = (
      population.Tournaments(b, cfg, start, evaluate, self.select_key)
      if cfg.population > 1
      else None
    )
    self.carry = b.stepper.pack(start.state)  # the stepper's layout from here on
    b.stepper.compile(self.carry)
    self.compile_seconds = time.perf_counter() - t0
    self.start = time.perf_counter()

  @property
  def done(self) -> bool:
    """Every real model has stopped by the `StopRule`."""
    return not self.selection.running[: self.built.n_real].any()

  @property
  def final(self) -> bool:
    return self.step >= self.cfg.steps or self.stopped is not None or self.done

  def advance(self, step: int) -> None:
    """Takes training step `step` (1-based) for every model still training, then evaluates when
    due (so the hooks see this step's stopping decisions)."""
    self.carry, metrics = self.built.stepper.step(self.carry, step - 1, self.selection.running)
    self.step, self._cache = step, {}
    self.loss_sum_M, self.loss_count = self.loss_sum_M + metrics["train/loss"], self.loss_count + 1
    if self.regular:
      self.evaluation()
    if self.pbt is not None and step % self.cfg.pbt_every == 0:  # the last step too: resume
      self.carry = self.pbt.play(self.state(), step, self.selection.running, self.built.stepper)
      self._cache.pop("state")

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
    ended = ended or self.done
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
        **({"population": self.pbt.history.to_json()} if self.pbt else {}),
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
        better, cut = self.selection.update(
          self.step,
          _padded(valid[self.select_key], len(self.built.table)),
          self._group_M,
          self.rule,
          self.built.table.latent,
          None if self.pbt is None else self.pbt.group_M,
        )
        if self.pbt is not None:  # a group stops with its best member
          self.selection.stopped_at = self.pbt.group_stops(self.selection, self.step)
        self.best_state = self._keep(
          sharding.put(better, sharding.models_sharding(self.built.mesh)), state, self.best_state
        )
        if cut.any():  # the plateau rule's learning-rate cuts, from the next step on
          factor = np.where(cut, self.rule.factor, 1.0).astype(np.float32)
          self.carry = self.built.stepper.scale_learning_rate(self.carry, factor)
          self._cache.pop("state")
      mean_loss = self.loss_sum_M / max(self.loss_count, 1)
      self._cache["eval"] = SweepOutput(
        state=state,
        table=self._real_table,
        train_loss=np.asarray(sharding.gather(mean_loss))[:n],
        valid=valid,
        step=self.step,
        seconds=time.perf_counter() - self.start,
        compile_seconds=self.compile_seconds,
        complete=(self.step >= self.cfg.steps or self.done) and not self.stopped,
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
    out = dataclasses.replace(
      last,
      state=jax.tree.map(jnp.asarray, sharding.gather(self._trim(best))),
      valid=self._valid(best),
      best_step=self.selection.step[:n].copy(),
      converged=self.selection.converged()[:n],
      stopped_at=np.where(self.selection.running, self.step, self.selection.stopped_at)[:n],
    )
    return out if self.pbt is None else self.pbt.winners(out, best)


@dataclasses.dataclass
class Start:
  """Where a run starts: padded state and best state [models], step, loss sums, selection."""

  state: train.TrainState
  best_state: train.TrainState
  step: int
  loss_sum_M: jax.Array
  loss_count: int
  selection: Selection
  history: dict[str, Any] | None = None  # --population: `population.History.to_json()`


def start(b, checkpointer, init_state, log) -> Start:
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
      aux.get("population"),
    )
  if init_state is not None:
    state = into(state, init_state)
  best = jax.tree.map(jnp.copy, state)  # the step donates `state`
  return Start(state, best, 0, jnp.zeros(m, jnp.float32), 0, Selection.fresh(m))
