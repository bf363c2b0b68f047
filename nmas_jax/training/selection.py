"""Early stopping inside the batch: each model's best evaluation so far, its learning-rate cuts,
and when it stopped because its held-out score stopped moving."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from nmas_jax.evaluation import dimension


@dataclasses.dataclass(frozen=True)
class StopRule:
  """When a model has converged (docs/method.md, "Training until the answer stops moving").

  A model is on a plateau when its best validation score improved by at most `tolerance` x its
  group's gain over the null during the last `patience` evaluations (since its last learning-rate
  cut). The first `cuts` plateaus multiply its learning rate by `factor`; the next one stops it.
  `patience` 0: never stop (train to --steps), and never cut.

  A model is held (neither cut nor stopped, and restarted if it had stopped) while its latent is
  its group's candidate: the latent just below the dimension rule's current answer (`fraction`),
  whose seed-mean gain is within `near` below the rule's bar. Such models can sit on a plateau
  just under the bar and escape it hundreds of steps later, which would move the answer
  (docs/method.md); a held model trains until it crosses the bar, falls away from it, or reaches
  the cap.
  """

  tolerance: float = 0.01
  patience: int = 4
  cuts: int = 1
  factor: float = 0.3
  fraction: float = dimension.DEFAULT_GAIN_FRACTION
  near: float = dimension.NEAR_BAR

  @classmethod
  def from_settings(cls, s) -> StopRule:
    return cls(
      s.stop_tolerance, s.stop_patience, s.lr_plateau_cuts, s.lr_plateau_factor, s.gain_fraction
    )


@dataclasses.dataclass
class Selection:
  """Each model's best regular evaluation so far, and where it stands with the `StopRule`.

  Arrays are [padded models] of the held-out loss the models are selected on
  (`Loop.select_key`): `score` the best so far (inf before any), `step` its step, `null` the
  loss of the null prediction (each neuron's training mean; NaN until set), `cuts` how many
  times its learning rate was cut, `since` the step of the last cut (0 if none), `stopped_at`
  the step the rule stopped it (0 while it trains). `trace` [evaluations, padded models] is
  `score` after each regular evaluation, at `trace_steps`.
  """

  score: np.ndarray
  step: np.ndarray
  null: np.ndarray
  trace_steps: np.ndarray
  trace: np.ndarray
  cuts: np.ndarray
  since: np.ndarray
  stopped_at: np.ndarray

  @classmethod
  def fresh(cls, m: int) -> Selection:
    zeros = lambda: np.zeros(m, np.int64)
    return cls(
      np.full(m, np.inf), zeros(), np.full(m, np.nan), zeros()[:0], np.zeros((0, m)), zeros(),
      zeros(), zeros(),
    )  # fmt: skip

  @property
  def running(self) -> np.ndarray:
    """[models] bool: not stopped by the rule (still training, or stopped only by the cap)."""
    return self.stopped_at == 0

  def converged(self) -> np.ndarray:
    """[models] bool: stopped by the rule (not by the cap)."""
    return self.stopped_at > 0

  def update(
    self,
    step: int,
    loss_M: np.ndarray,
    group_M: np.ndarray,
    rule: StopRule | None = None,
    latent_M: np.ndarray | None = None,
    population_M: np.ndarray | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Records an evaluation of every model, then applies `rule` (None: selection only).

    Args:
      step: the step of the evaluation.
      loss_M: [models] the held-out loss (non-finite counts as inf).
      group_M: [models] int, models whose gains are compared (one layer at one neuron count):
        the tolerance is relative to the largest gain over the null in the group.
      latent_M: [models] each model's latent size, for the rule's hold (None: no hold).
      population_M: [models] int, with --population the population each model is a member of:
        the hold then averages only each population's best member so far (None: every model).
    Returns:
      ([models] bool improved: the best so far, and the model still trains;
       [models] bool cut: its learning rate is to be multiplied by `rule.factor` now).
    """
    running = self.running
    loss_M = np.where(np.isfinite(loss_M), loss_M, np.inf)
    improved = running & (loss_M < self.score)
    self.score = np.where(improved, loss_M, self.score)
    self.step = np.where(improved, step, self.step)
    self.trace_steps = np.append(self.trace_steps, step)
    self.trace = np.concatenate([self.trace, self.score[None]])
    cut = np.zeros_like(running)
    if rule is None or rule.patience <= 0:
      return improved, cut
    plateau = running & self._plateau(group_M, rule)
    if latent_M is not None:
      counted = None if population_M is None else best_of(self.score, population_M)
      held = self.held(group_M, latent_M, rule, counted)
      self.since = np.where(held & ~running, step, self.since)
      self.stopped_at = np.where(held, 0, self.stopped_at)
      plateau &= ~held
    cut = plateau & (self.cuts < rule.cuts)
    self.cuts = self.cuts + cut
    self.since = np.where(cut, step, self.since)
    self.stopped_at = np.where(plateau & ~cut, step, self.stopped_at)
    return improved, cut

  def held(
    self,
    group_M: np.ndarray,
    latent_M: np.ndarray,
    rule: StopRule,
    counted_M: np.ndarray | None = None,
  ) -> np.ndarray:
    """[models] bool: the model's latent is its group's candidate now (`StopRule`), judged on
    the gains of the `counted_M` models (default all)."""
    gain_M = np.where(np.isfinite(self.score), self.null - self.score, np.nan)
    if counted_M is not None:
      gain_M = np.where(counted_M, gain_M, np.nan)
    held = np.zeros(len(gain_M), bool)
    for g in np.unique(group_M):
      ks = np.unique(latent_M[group_M == g])
      with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a latent with no finite score: NaN
        gain_K = np.array([np.nanmean(gain_M[(group_M == g) & (latent_M == k)]) for k in ks])
      answer = dimension.choose(ks, gain_K, rule.fraction)
      below = np.flatnonzero(ks < answer)
      if not len(below):
        continue
      j = below[-1]
      share = gain_K[j] / np.nanmax(gain_K[j:])
      if rule.fraction - rule.near <= share < rule.fraction:
        held |= (group_M == g) & (latent_M == ks[j])
    return held

  def _plateau(self, group_M: np.ndarray, rule: StopRule) -> np.ndarray:
    """[models] bool: the last `patience` evaluations since the last cut improved the best score
    by at most `tolerance` x the group's best gain over the null (a never-finite score: yes)."""
    finite = np.isfinite(self.score)
    gain_M = np.where(finite & np.isfinite(self.null), np.maximum(self.null - self.score, 0), 0)
    _, group_M = np.unique(group_M, return_inverse=True)
    best_G = np.zeros(group_M.max() + 1)
    np.maximum.at(best_G, group_M, gain_M)
    past = len(self.trace) - 1 - rule.patience
    if past < 0:
      return np.zeros(len(self.score), bool)
    judged = self.trace_steps[past] >= self.since  # `patience` evaluations since the last cut
    with np.errstate(invalid="ignore"):
      moved = np.where(finite, self.trace[past] - self.score, 0.0)
    return judged & (moved <= rule.tolerance * best_G[group_M])

  def real(self, n: int) -> Selection:
    """The first `n` (real) models."""
    cut = lambda name, a: a[:, :n] if name == "trace" else a if name == "trace_steps" else a[:n]
    return Selection(*[cut(name, a) for name, a in zip(_FIELDS, dataclasses.astuple(self))])

  def to_json(self) -> dict[str, list]:
    num = lambda a: [float(v) if np.isfinite(v) else None for v in a]
    out = {k: num(getattr(self, k)) for k in ("score", "null")}
    out |= {k: getattr(self, k).tolist() for k in ("step", "cuts", "since", "stopped_at")}
    return out | {"trace_steps": self.trace_steps.tolist(), "trace": [num(r) for r in self.trace]}

  @classmethod
  def from_json(cls, d: dict[str, list], m: int) -> Selection:
    """The inverse of `to_json` for [m] padded models (fields a checkpoint lacks: fresh)."""
    fresh = cls.fresh(m)
    arr = lambda v, fill: np.concatenate(
      [np.array([fill if x is None else x for x in v], float), np.full(m - len(v), fill)]
    )
    get = lambda k, fill: arr(d[k], fill) if k in d else getattr(fresh, k)
    ints = {k: get(k, 0).astype(np.int64) for k in ("step", "cuts", "since", "stopped_at")}
    return cls(
      score=get("score", np.inf),
      null=get("null", np.nan),
      trace_steps=np.array(d["trace_steps"], np.int64),
      trace=np.array([arr(row, np.inf) for row in d["trace"]]).reshape(-1, m),
      **ints,
    )


_FIELDS = [f.name for f in dataclasses.fields(Selection)]


def best_of(score_M: np.ndarray, group_M: np.ndarray) -> np.ndarray:
  """[models] bool: the model with the lowest finite score of each group (the first if none)."""
  score = np.where(np.isfinite(score_M), score_M, np.inf)
  order = np.lexsort((np.arange(len(score)), score, group_M))  # by group, then score, then index
  first = np.r_[True, group_M[order][1:] != group_M[order][:-1]]
  out = np.zeros(len(score), bool)
  out[order[first]] = True
  return out


def _padded(a: np.ndarray, m: int, fill: float = np.inf) -> np.ndarray:
  return np.concatenate([a, np.full(m - len(a), fill)])
