"""Population-based training inside the batch (`training.population`): the tournament, the
explore step, the exploit gather, and a whole sweep with --population against its references."""

import dataclasses

import jax
import numpy as np
import pytest

from nmas_jax import config, models
from nmas_jax.data import splits, synthetic
from nmas_jax.errors import UserError
from nmas_jax.training import population, train
from nmas_jax.training.table import ModelTable, init_states


def _table(members=4):
  return ModelTable.build(num_layers=2, latents=(2, 4), seeds=1, members=members)


def test_tournament_pairs_running_members_of_a_group_and_each_loser_copies_its_winner():
  """Members 0..3 of each (layer, latent) group: two pairs per group, the lower score wins; a
  loser's source is in its own group and scored lower; winners and stopped members copy no one
  and a stopped member is never copied; the same (scores, step) give the same pairs."""
  t = _table()
  group = population.group_of(t)
  rng = np.random.default_rng(0)
  score = rng.uniform(size=len(t))
  running = np.ones(len(t), bool)
  running[5] = False  # group 1's member 1
  src = population.tournament(score, group, running, 40, t)
  np.testing.assert_array_equal(src, population.tournament(score, group, running, 40, t))
  lost = np.flatnonzero(src != np.arange(len(t)))
  for i in lost:
    assert group[src[i]] == group[i] and score[src[i]] < score[i] and running[src[i]]
    assert src[src[i]] == src[i]  # a winner keeps its own state
  per_group = np.bincount(group[lost], minlength=group.max() + 1)
  assert per_group[group[5]] == 1 and (np.delete(per_group, group[5]) == 2).all()
  assert src[5] == 5 and 5 not in src[lost]
  assert not np.array_equal(src, population.tournament(score, group, running, 80, t))


def test_explore_multiplies_a_losers_copied_values_within_the_weight_and_clips_to_the_range():
  cfg = config.Settings(population=4)
  t = _table()
  hp = population.initial(cfg, t)
  assert list(hp) == ["learning_rate", "weight_decay", "dropout"]  # --dropout > 0, --cd_rate 0
  for name, t_ in population.tuned(cfg).items():
    lo, hi = getattr(cfg, t_.range)
    assert ((hp[name] >= lo * 0.999) & (hp[name] <= hi * 1.001)).all()
    drawn = hp[name][t.member > 0]
    assert len(np.unique(drawn)) == len(drawn)  # every other member its own draw
  src = np.arange(len(t))
  src[1], src[2] = 0, 3
  new = population.explore(hp, src, 40, t, cfg)
  for name, t_ in population.tuned(cfg).items():
    lo, hi, w = *getattr(cfg, t_.range), t_.weight
    for i in (1, 2):
      factor = new[name][i] / hp[name][src[i]]
      clipped = np.isclose(new[name][i], lo) or np.isclose(new[name][i], hi)
      assert clipped or 0.002 * w * 0.999 <= abs(factor - 1) <= w * 1.001, (name, i, factor)
    keep = np.setdiff1d(np.arange(len(t)), [1, 2])
    np.testing.assert_array_equal(new[name][keep], hp[name][keep])


def test_member_0_of_every_group_starts_from_the_runs_settings_clipped_to_the_range():
  """The search holds the run's own values: member 0 of each group starts at --learning_rate,
  --dropout and --cd_rate as given, and at --weight_decay=0 clipped up to its range's low end."""
  cfg = config.Settings(population=4, learning_rate=2e-3, dropout=0.25, cd_rate=0.3)
  t = _table()
  hp = population.initial(cfg, t)
  first = t.member == 0
  assert first.sum() == len(np.unique(population.group_of(t)))
  for name, want in [("learning_rate", 2e-3), ("dropout", 0.25), ("cd_rate", 0.3)]:
    np.testing.assert_array_equal(hp[name][first], np.float32(want))
    assert not np.isin(hp[name][~first], np.float32(want)).any()
  np.testing.assert_array_equal(hp["weight_decay"][first], np.float32(cfg.pbt_weight_decay[0]))


def test_exploit_gathers_parameters_and_optimizer_state_and_sets_the_new_hyperparameters():
  """Members start from the same weights with their own learning rates; after an exploit
  model i holds model src[i]'s parameters and Adam moments, its own key, and the given values."""
  cfg = config.Settings(latents=(2, 4), hidden=4, window=5, population=2, decoder="linear")
  t = ModelTable.build(num_layers=1, latents=(2, 4), seeds=1, members=2)
  tx = train.optimizer_for(dataclasses.replace(cfg, learning_rate=1e-3))
  state = init_states(cfg, t, 6, tx)
  lr = np.asarray(population.hyperparams(state)["learning_rate"])
  assert lr[0] != lr[2] and lr[1] != lr[3]  # rows: member 0 at latents 2, 4, then member 1
  leaves = lambda s: jax.tree.leaves(s.params)
  state = state.replace(
    params=jax.tree.map(
      lambda a: a + np.arange(4).reshape((4,) + (1,) * (a.ndim - 1)), state.params
    )
  )
  src = np.array([1, 1, 2, 2], np.int32)
  names = population.tuned(cfg)
  assert list(state.hparams) == ["dropout"]  # the model's own; the optimizer's in opt_state
  hp = {n: np.array([1e-4, 2e-4, 3e-4, 4e-4], np.float32) for n in names}
  new = jax.jit(population.exploit)(state, src, hp)
  for a, b in zip(leaves(new), leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[src])
  np.testing.assert_array_equal(np.asarray(new.key), np.asarray(state.key))
  for n in names:
    np.testing.assert_allclose(np.asarray(population.hyperparams(new)[n]), hp[n])


def test_a_population_needs_a_training_block_longer_than_its_selection_block():
  ds = synthetic.make_linear_gaussian(true_latents=(2,), neurons=10, time=1000, seed=0)
  short = dict(latents=(2,), train_fraction=0.1, valid_fraction=0.5, population=2)
  with pytest.raises(UserError) as e:
    splits.prepare(ds, config.Settings(window=60, **short))
  assert str(e.value) == (
    "--population=2 scores members on the last 60 bins of the training block, which leaves "
    "fewer than one 60-bin window to train on: use --population=1 or a larger --train_fraction"
  )
  prep = splits.prepare(ds, config.Settings(window=10, **short))
  lo, hi = prep.block("select")
  assert hi == prep.t_train and prep.step_kwargs()["t_train"] == lo < hi


def test_the_stop_rules_hold_judges_a_population_by_its_best_members():
  """Latents 1, 2, 4 with two members each (null loss 1): the best members' gains are 0.5, 0.93
  and 1.0, so latent 2 sits within 5% below the 95% bar and is held (both its members); averaged
  over all members (0.5, 0.715, 0.75) latent 2 would clear the bar and nothing be held."""
  from nmas_jax.training import selection

  sel = selection.Selection.fresh(6)
  sel.null = np.ones(6)
  sel.score = np.array([0.5, 0.5, 0.07, 0.5, 0.0, 0.5])
  group, latent, pop = np.zeros(6, int), np.array([1, 1, 2, 2, 4, 4]), np.repeat([0, 1, 2], 2)
  rule = selection.StopRule()
  best = selection.best_of(sel.score, pop)
  np.testing.assert_array_equal(best, [True, False, True, False, True, False])
  np.testing.assert_array_equal(sel.held(group, latent, rule, best), [0, 0, 1, 1, 0, 0])
  assert not sel.held(group, latent, rule).any()


def test_members_of_a_group_stop_together_with_their_best_member():
  """Two groups of three: in group 0 the best member (score 0.1) stopped at step 40, so its
  others stop now (step 60) unless stopped before (30 stays); in group 1 the best member trains,
  so its member stopped by the rule is restarted. A padding model is left as it is."""
  stopped = np.array([30, 40, 0, 50, 0, 0, 70])
  score = np.array([0.5, 0.1, 0.3, 0.2, 0.1, 0.4, 0.0])
  group = np.array([0, 0, 0, 1, 1, 1, 1])
  real = np.arange(7) < 6
  out = population.stop_together(stopped, score, group, real, 60)
  np.testing.assert_array_equal(out, [30, 40, 60, 0, 0, 0, 70])


MEMBERS = {  # two members' own model hyper-parameters, per family (`Family.tuned`; LFADS without
  # a controller, so no kl_co_scale: a smaller program)
  "autoencoder": dict(dropout=[0.1, 0.45], cd_rate=[0.2, 0.6]),
  "lfads": dict(
    dropout=[0.05, 0.5],
    cd_rate=[0.3, 0.1],
    kl_ic_scale=[1e-5, 1e-3],
    l2_gen_scale=[1e-2, 1e-6],
  ),
}


@pytest.mark.parametrize("family", ["autoencoder", "lfads"])
def test_each_member_trains_as_the_model_built_with_its_own_hyperparameters(family):
  """Two members (copies of one state) in one vmapped step, each with its own dropout,
  coordinated-dropout rate (and LFADS KL and L2 weights) held as traced values: member 1 ends
  the step with the loss and params of the model built with its values as Python numbers (a
  separate program: 1e-5), and member 0's loss differs, so neither took the other's values."""
  cfg = config.Settings(
    model=family, latents=(3,), hidden=4, gen_dim=4, ic_enc_dim=3, ci_enc_dim=3, con_dim=3,
    co_dim=0, window=5, cd_rate=0.3, population=2, likelihood="gaussian", bidirectional=False,
  )  # fmt: skip
  assert set(population.tuned(cfg)) == {"learning_rate", "weight_decay", *MEMBERS[family]}
  model = models.make_model(cfg, 5)
  tx = train.optimizer_for(dataclasses.replace(cfg, learning_rate=1e-2))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 5))
  one = train.init_state(jax.random.PRNGKey(0), 3, model=model, tx=tx, example_x_BTN=x[:1])
  hp = {n: np.asarray(v, np.float32) for n, v in MEMBERS[family].items()}
  both = jax.tree.map(lambda a: np.stack([a, a]), one).replace(hparams=hp)
  step = lambda m: jax.vmap(lambda s: train.train_step(s, {"x": x}, model=m, tx=tx))
  new, metrics = jax.jit(step(model))(both)
  own = model.clone(**{n: float(v[1]) for n, v in hp.items()})
  ref, ref_metrics = jax.jit(lambda s: train.train_step(s, {"x": x}, model=own, tx=tx))(one)
  np.testing.assert_allclose(metrics["train/loss"][1], ref_metrics["train/loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(np.asarray(a)[1], b, rtol=1e-5, atol=1e-6)
  assert metrics["train/loss"][0] != metrics["train/loss"][1]


def test_dropout_with_a_traced_rate_draws_as_flax_dropout():
  """`layers.Dropout` keeps the same elements as `nn.Dropout` from the same key, and scales
  them by 1 / (1 - rate), with the rate a Python number or a traced scalar."""
  import flax.linen as nn

  from nmas_jax.models.layers import Dropout

  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  rngs = {"dropout": jax.random.PRNGKey(7)}
  ref = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
  ours = Dropout(0.3).apply({}, x, deterministic=False, rngs=rngs)
  traced = jax.jit(lambda r: Dropout(r).apply({}, x, deterministic=False, rngs=rngs))(0.3)
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_array_equal(np.asarray(traced) == 0, np.asarray(ref) == 0)
  np.testing.assert_allclose(traced, ref, rtol=1e-6)


def test_a_rate_range_outside_zero_to_one_is_a_one_line_error():
  with pytest.raises(UserError) as e:
    config.Settings(pbt_dropout="0.2,1.5")
  assert str(e.value) == (
    "--pbt_dropout=0.2,1.5 is not a range of rates: give two numbers in [0, 1), low first, "
    "e.g. --pbt_dropout=0,0.6"
  )
  assert config.Settings(pbt_dropout="0,0.5").pbt_dropout == (0.0, 0.5)
