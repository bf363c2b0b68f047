"""Population-based training inside the batch (Jaderberg et al. 2017; AutoLFADS, Keshtkaran et al.
2022): each (layer, count, seed, decoder, latent) model has `--population` members on the models
axis, each training with its own learning rate and weight decay (held in its optimizer state,
`train.with_hyperparams`) and its own model hyper-parameters (`Family.tuned`: dropout, the LFADS
KL and L2 weights; held in `TrainState.hparams`). Every `--pbt_every` steps the members of each
group play a binary tournament on a selection block (the end of the training block, which training
windows then leave out): each loser copies its winner's parameters and optimizer state (a gather
on the models axis, on the device) and explores, multiplying each hyper-parameter by 1 +/- U(0.002
w, w), clipped to its range (lfads-torch's explore). Every random draw is a pure function of the
model's table row and the step, so a resumed run repeats an uninterrupted one's decisions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nmas_jax import models
from nmas_jax.models.family import Tuned
from nmas_jax.training import sharding, train
from nmas_jax.training.selection import best_of

# The optimizer's tuned hyper-parameters (every family). Learning rate: lfads-torch's
# scripts/run_pbt.py (1e-5..5e-3, w 0.3); weight decay (AdamW's, decoupled): 1e-5..1e-1, w 0.8
# as lfads-torch's L2 scales.
OPTIMIZER = {
  "learning_rate": Tuned("pbt_learning_rate", 0.3),
  "weight_decay": Tuned("pbt_weight_decay", 0.8),
}


def tuned(cfg) -> dict[str, Tuned]:
  """Every hyper-parameter a population of `cfg` tunes: the optimizer's, then the family's."""
  return OPTIMIZER | models.family(cfg.model).tuned(cfg)


def group_of(table) -> np.ndarray:
  """[models] int: the population each model belongs to (every column but the member)."""
  cols = [table.layer, table.count, table.seed, table.latent, table.decoder, table.bands]
  rows = np.column_stack([c.reshape(len(table), -1) for c in cols])
  return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def _rng(table, i: int, step: int, salt: int) -> np.random.Generator:
  """A generator fixed by model i's table row, the step and `salt`."""
  row = [table.layer[i], table.count[i], table.seed[i], table.latent[i], table.member[i]]
  row += [*table.decoder[i], *table.bands[i]]
  return np.random.default_rng([int(v) for v in row] + [step, salt])


def initial(cfg, table) -> dict[str, np.ndarray]:
  """Each member's starting hyper-parameters [models]: member 0 of every group starts from the
  run's own settings (`--learning_rate`, `--dropout`, ...; clipped to the range), so the search
  holds the defaults and leaves them only where the selection block scores another member
  better; the others draw log-uniform (or uniform, `Tuned.log`) over the ranges."""
  out = {}
  for salt, (name, t) in enumerate(tuned(cfg).items()):
    lo, hi = np.log(getattr(cfg, t.range)) if t.log else getattr(cfg, t.range)
    u = np.array([_rng(table, i, 0, salt).uniform() for i in range(len(table))])
    v = lo + u * (hi - lo)
    v = np.exp(v) if t.log else v
    v[table.member == 0] = np.clip(getattr(cfg, name), *getattr(cfg, t.range))
    out[name] = v.astype(np.float32)
  return out


def tournament(
  score_M: np.ndarray, group_M: np.ndarray, running_M: np.ndarray, step: int, table
) -> np.ndarray:
  """[models] int: the model each one copies from now, itself unless it lost. The running
  members of each group are paired at random (fixed by the group's first row and the step);
  in each pair the lower selection score wins (a non-finite score loses)."""
  src = np.arange(len(score_M))
  score = np.where(np.isfinite(score_M), score_M, np.inf)
  for g in np.unique(group_M):
    members = np.flatnonzero((group_M == g) & running_M)
    if len(members) < 2:
      continue
    order = _rng(table, members[0], step, 100).permutation(members)
    half = len(order) // 2
    for a, b in zip(order[:half], order[half : 2 * half]):
      win, lose = (a, b) if score[a] <= score[b] else (b, a)
      src[lose] = win
  return src


def explore(
  hp: dict[str, np.ndarray], src_M: np.ndarray, step: int, table, cfg
) -> dict[str, np.ndarray]:
  """The hyper-parameters after the tournament: a loser's are its winner's times 1 +/- U(0.002 w,
  w), clipped to the range; a winner's are unchanged."""
  out = {}
  lost = np.flatnonzero(src_M != np.arange(len(src_M)))
  for salt, (name, t) in enumerate(tuned(cfg).items()):
    lo, hi = getattr(cfg, t.range)
    new = hp[name][src_M].astype(np.float64)
    for i in lost:
      rng = _rng(table, i, step, 200 + salt)
      new[i] *= 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.002 * t.weight, t.weight)
    out[name] = np.clip(new, lo, hi).astype(np.float32)
  return out


def hyperparams(state: train.TrainState) -> dict[str, jax.Array]:
  """The tuned hyper-parameters [models]: the optimizer state's, then the model's."""
  opt = {n: optax.tree_utils.tree_get(state.opt_state, n) for n in OPTIMIZER}
  return opt | dict(state.hparams)


def with_hyperparams(state: train.TrainState, hp: dict[str, Any]) -> train.TrainState:
  """`state` with the tuned hyper-parameters `hp` ({name: [models]}) set: the optimizer's in its
  state, the model's in `hparams`."""
  state = train.with_hyperparams(state, **{n: v for n, v in hp.items() if n in OPTIMIZER})
  own = {n: jnp.asarray(v, jnp.float32) for n, v in hp.items() if n not in OPTIMIZER}
  return state.replace(hparams=own) if own else state


def exploit(state: train.TrainState, src_M: jax.Array, hp: dict[str, jax.Array]):
  """Each model's parameters and optimizer state from model `src_M` (a gather on the models
  axis; jit it), its hyper-parameters set to `hp`; its own key, latent size and step are
  kept."""
  take = lambda tree: jax.tree.map(lambda a: a[src_M], tree)
  state = state.replace(
    params=take(state.params),
    opt_state=take(state.opt_state),
    diverged_at=state.diverged_at[src_M],
  )
  return with_hyperparams(state, {n: jnp.asarray(v) for n, v in hp.items()})


def winners(score_M: np.ndarray, group_M: np.ndarray) -> np.ndarray:
  """[groups] the index of each group's best member (lowest finite score; the first member when
  none is finite), in the order of the groups' first models."""
  score = np.where(np.isfinite(score_M), score_M, np.inf)
  firsts = np.unique(group_M, return_index=True)[1]
  out = []
  for g in group_M[np.sort(firsts)]:
    members = np.flatnonzero(group_M == g)
    out.append(members[np.argmin(score[members])])
  return np.array(out, np.int64)


def stop_together(
  stopped_at_M: np.ndarray,
  score_M: np.ndarray,
  group_M: np.ndarray,
  real_M: np.ndarray,
  step: int,
) -> np.ndarray:
  """[models] stopped_at with the members of a group stopping together: all of them (at `step`,
  unless stopped before) once its best member (lowest `score_M`) has stopped, none while it
  trains. A worse member is not stopped on its own: it copies a better one at the next round."""
  stopped = stopped_at_M.copy()
  for i in np.flatnonzero(best_of(np.where(real_M, score_M, np.inf), group_M) & real_M):
    members = (group_M == group_M[i]) & real_M
    if stopped[i] > 0:
      stopped[members] = np.where(stopped[members] > 0, stopped[members], step)
    else:
      stopped[members] = 0
  return stopped


@dataclasses.dataclass
class History:
  """What the population did: the steps of its tournaments, each model's hyper-parameters after
  each ({name: [events, models]}, the first row the initial draw at step 0) and whom it copied
  ([events, models])."""

  steps: list[int]
  values: dict[str, list[list[float]]]
  source: list[list[int]]

  @classmethod
  def fresh(cls, hp: dict[str, np.ndarray]) -> History:
    m = len(next(iter(hp.values())))
    return cls([0], {n: [v.tolist()] for n, v in hp.items()}, [list(range(m))])

  def record(self, step: int, hp: dict[str, np.ndarray], src_M: np.ndarray) -> None:
    self.steps.append(step)
    for n, v in hp.items():
      self.values[n].append(np.asarray(v, float).tolist())
    self.source.append(np.asarray(src_M).tolist())

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> History:
    return cls(list(d["steps"]), {n: list(v) for n, v in d["values"].items()}, list(d["source"]))


class Tournaments:
  """A sweep loop's population: scores members on the selection block, plays the tournaments
  (`play`), stops a group with its best member (`group_stops`), keeps the `History`, and picks
  each group's winner at the end (`winners`)."""

  def __init__(self, b, cfg, start, evaluate, key: str):
    self.b, self.cfg, self.key = b, cfg, key  # key: the loss members are ranked on
    self.real_M = np.arange(len(b.table)) < b.n_real
    # Padding models (inert copies of the last real one) each form a group of their own.
    self.group_M = np.where(self.real_M, group_of(b.table), len(b.table) + np.arange(len(b.table)))
    self._by_model = sharding.models_sharding(b.mesh)
    select_LVTN = sharding.put(b.prep.windows_LVTN("select"), sharding.replicated(b.mesh))
    self._args = (select_LVTN, b.placed.mask_MN, b.placed.target_MN, b.placed.layer_M)
    self._score = jax.jit(evaluate).lower(start.state, *self._args).compile()
    self._exploit = jax.jit(exploit, out_shardings=self._by_model)
    self.played, self._last = -1, {}  # the step of the last tournament, its scalars
    self.history = (
      History.from_json(start.history)
      if start.history
      else History.fresh({n: v[: b.n_real] for n, v in self._hp(start.state).items()})
    )

  def _hp(self, state) -> dict[str, np.ndarray]:
    return {n: np.asarray(sharding.gather(v)) for n, v in hyperparams(state).items()}

  def score(self, state) -> np.ndarray:
    """[padded models] each model's loss on the selection block."""
    return np.asarray(sharding.gather(self._score(state, *self._args))[self.key])

  def play(self, state, step: int, running_M: np.ndarray, stepper):
    """One round at `step`: the stepper's carry after every group's tournament."""
    score = self.score(state)
    src = tournament(score, self.group_M, running_M & self.real_M, step, self.b.table)
    hp = explore(self._hp(state), src, step, self.b.table, self.cfg)
    n = self.b.n_real
    self.played, self._last = step, {"pbt/selection_loss": score[:n]}
    self._last |= {f"pbt/{k}": v[:n] for k, v in hp.items()}
    put = lambda a: sharding.put(a, self._by_model)
    new = self._exploit(state, put(src.astype(np.int32)), {k: put(v) for k, v in hp.items()})
    self.history.record(step, {k: v[:n] for k, v in hp.items()}, src[:n])
    return stepper.pack(new)

  def scalars(self) -> dict[str, np.ndarray]:
    """The last tournament's selection-block losses (before it) and hyper-parameters (after it),
    [real models], for TensorBoard."""
    return self._last

  def group_stops(self, selection, step: int) -> np.ndarray:
    """`selection.stopped_at` with each group's members stopping together (`stop_together`)."""
    return stop_together(selection.stopped_at, selection.score, self.group_M, self.real_M, step)

  def winners(self, out, best_state):
    """`out` (real models) narrowed to each group's winner, the member whose best state scores
    lowest on the selection block, with the population's `summary`."""
    n = self.b.n_real
    score = self.score(best_state)[:n]
    index = winners(score, self.group_M[:n])
    return dataclasses.replace(out.take(index), population=self.summary(out, score, index))

  def summary(self, out, score_M: np.ndarray, index: np.ndarray) -> dict[str, Any]:
    """results.json's `population`: each member's hyper-parameters after each tournament, whom it
    copied (a member number), where it stopped, its final selection-block loss, and the winners
    (indices into `members`)."""
    prep, cfg, h, table = self.b.prep, self.cfg, self.history, out.table
    specs = tuned(cfg)  # each tuned hyper-parameter: its range and scale
    names = None if prep.shared else prep.dataset.layer_names
    members = []
    for i in range(len(table)):
      row = {
        "model": table.describe(i, names, cfg.decoders),
        "latent": int(table.latent[i]),
        "member": int(table.member[i]),
        "selection_loss": float(score_M[i]) if np.isfinite(score_M[i]) else None,
        "best_step": int(out.best_step[i]),
        "stopped_at_step": int(out.stopped_at[i]),
        "converged": bool(out.converged[i]),
        "copied_from": [int(table.member[r[i]]) for r in h.source],
      }
      members.append(row | {k: [r[i] for r in v] for k, v in h.values.items()})
    return {
      "size": cfg.population,
      "every": cfg.pbt_every,
      "selection_block": list(prep.block("select")),
      "ranges": {k: list(getattr(cfg, t.range)) for k, t in specs.items()},
      "log_scale": {k: t.log for k, t in specs.items()},
      "steps": list(h.steps),
      "members": members,
      "winners": [int(i) for i in index],
    }
