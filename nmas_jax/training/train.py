"""Pure train and eval steps for ONE model; the sweep vmaps them over models.

`train_step(state, batch, *, model, tx, likelihood) -> (state, metrics)` has
no hidden state: the caller composes `jax.jit(jax.vmap(partial(train_step,
...)))`. Every model carries its own params, optimiser state (with its own
learning rate and weight decay), PRNG key and latent size, so under vmap no
model's gradient depends on another model's params or data.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from nmas_jax import models
from nmas_jax.models.losses import (
  elementwise_loss,
  mean_prediction,
  neuron_weighted_loss,
  reconstruction_loss,
  weighted_loss,
)


@struct.dataclass
class TrainState:
  """One model's training state (under vmap every leaf gains a leading models axis)."""

  step: jax.Array  # int32 []
  params: Any
  opt_state: Any
  key: jax.Array  # PRNG key of this model: step_rngs folds in the step
  latent: jax.Array  # int32 [], latent size k <= the model's padded width
  diverged_at: jax.Array  # int32 [], first step with a non-finite loss/gradient, -1 if none
  # A population member's own model hyper-parameters {field name: float32 []} (`Family.tuned`;
  # empty otherwise): the train step runs `model.clone(**hparams)`.
  hparams: dict[str, jax.Array] = struct.field(default_factory=dict)


def make_optimizer(
  learning_rate: Any = 1e-3,
  weight_decay: Any = 0.0,
  clip_norm: float = 1.0,
  lr_half_life: float = 0.0,
) -> optax.GradientTransformation:
  """AdamW behind global-norm clipping; lr and weight decay live in the opt state.

  Because `inject_hyperparams` stores them in the state, a vmapped init over
  arrays of learning rates gives every model its own, and `update` reads them
  from the state (the values given here only matter for `init`). `lr_half_life`
  > 0 scales every update by 0.5 ** (step / lr_half_life): the decay depends on
  the step count alone, never on --steps, so with it as with a constant rate,
  raising --steps and resuming equals a longer run from the start.
  """
  adamw = optax.inject_hyperparams(optax.adamw)(
    learning_rate=learning_rate, weight_decay=weight_decay
  )
  if lr_half_life <= 0:
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
  return optax.chain(
    optax.clip_by_global_norm(clip_norm),
    adamw,
    optax.scale_by_schedule(lambda step: 0.5 ** (step / lr_half_life)),
  )


def optimizer_for(s: Any) -> optax.GradientTransformation:
  """The sweep's optimizer from settings `s` (learning_rate, weight_decay, clip_norm,
  lr_half_life): built once, and passed to the init and the steps."""
  return make_optimizer(s.learning_rate, s.weight_decay, s.clip_norm, s.lr_half_life)


def init_state(
  key: jax.Array,
  latent: Any,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  example_x_BTN: jax.Array,
) -> TrainState:
  """Initial state of one model; vmap it over keys and latents for a sweep (each model then holds
  its own copy of the optimizer's learning rate and weight decay)."""
  init_key, model_key = jax.random.split(key)
  params = models.scale_latent_inputs(model, model.init(init_key, example_x_BTN)["params"], latent)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    key=model_key,
    latent=jnp.asarray(latent, jnp.int32),
    diverged_at=jnp.full((), -1, jnp.int32),
  )


def with_hyperparams(state: TrainState, **values: Any) -> TrainState:
  """`state` with optimizer hyper-parameters replaced by name (e.g. learning_rate=lr_M [models]
  on a sweep's state): each model then trains with its own."""
  return state.replace(opt_state=optax.tree_utils.tree_set(state.opt_state, **values))


def scale_learning_rate(state: TrainState, factor: Any) -> TrainState:
  """`state` with its learning rate multiplied by `factor` (an array [models] on a sweep's state:
  the plateau rule's cut, `selection.StopRule`)."""
  lr = optax.tree_utils.tree_get(state.opt_state, "learning_rate")
  return with_hyperparams(state, learning_rate=lr * jnp.asarray(factor, lr.dtype))


def step_rngs(state: TrainState) -> dict[str, jax.Array]:
  """This model's randomness at this step (dropout and the like): a pure function of (key, step)."""
  key = jax.random.fold_in(state.key, state.step)
  return {"dropout": key, "sample": jax.random.fold_in(key, 1)}


def encoder_input(x_BTN: jax.Array, input_mask_N: jax.Array | None) -> jax.Array:
  """Zeroes held-out neurons (mask 0) so the encoder never sees them."""
  return x_BTN if input_mask_N is None else x_BTN * input_mask_N[None, None, :]


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  likelihood: str = "gaussian",
  latent_width: int | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW step on a batch: {"x": [batch, time, neurons], "input_mask": [neurons] (optional),
  "loss_mask": [neurons] (optional: the neurons the loss covers; default all)}.

  The encoder sees x * input_mask; the loss covers every neuron, so held-out
  neurons (mask 0) are learned only through the decoder (co-smoothing). A
  caller stepping several models on the same x may pass that product once as
  batch["x_in"] instead of "input_mask". A caller may also narrow a model to
  the neurons it reads and predicts (`models.narrow_neurons`): then x_in is
  [batch, time, I] (the inputs "neurons_in" [I]), x and loss_mask cover the
  outputs "neurons_out" [O], and the result equals the masked full-width step.

  A population's member (`state.hparams`) trains as `model.clone(**state.hparams)`.

  A model whose loss or gradient norm is non-finite is frozen from that step
  on (params and optimiser state stop changing) and `diverged_at` records the
  step, so one diverging model cannot spoil a batched sweep.
  """

  x_BTN = batch["x"]
  x_in_BTN = batch["x_in"] if "x_in" in batch else encoder_input(x_BTN, batch.get("input_mask"))
  rngs = step_rngs(state)
  cd_w_BTN = None
  if model.cd_rate > 0:  # the run uses coordinated dropout (at a member's own rate if tuned)
    rate = state.hparams.get("cd_rate", model.cd_rate)
    x_in_BTN, cd_w_BTN = coordinated_dropout_weights(batch, x_in_BTN, rate, rngs)
  if state.hparams:
    model = model.clone(**state.hparams)
  latent = state.latent
  if latent_width is not None:  # params already cut to this width (`models.cut_latent`)
    model, latent = model.clone(latent=latent_width), None

  def loss_fn(params):
    m = model
    if "neurons_in" in batch:
      m, params = model.narrowed(params, batch["neurons_in"], batch["neurons_out"])
    y_BTN, extra = m.train_output(params, x_in_BTN, latent, state.step, rngs)
    if cd_w_BTN is not None:
      recon = weighted_loss(y_BTN, x_BTN, cd_w_BTN, likelihood)
    elif "loss_mask" in batch:  # neurons outside the model's --neuron_counts subset: no loss
      recon = neuron_weighted_loss(y_BTN, x_BTN, batch["loss_mask"], likelihood)
    else:
      recon = reconstruction_loss(y_BTN, x_BTN, likelihood)
    return recon if extra is None else recon + extra

  return _apply_grads(state, tx, *jax.value_and_grad(loss_fn)(state.params))


def coordinated_dropout_weights(
  batch: dict[str, jax.Array], x_in_BTN: jax.Array, rate: float, rngs: dict[str, jax.Array]
) -> tuple[jax.Array, jax.Array]:
  """Coordinated dropout on the encoder's input [B, T, N]: (input, loss weights [B, T, N]).

  Input neurons are scored only where the input hid them, so no model can lower its loss by
  copying an element to its own output; held-out neurons (never input) stay scored everywhere;
  `loss_mask` (--neuron_counts) still applies."""
  x_BTN = batch["x"]
  x_in_BTN, cd_BTN = models.coordinated_dropout(
    jax.random.fold_in(rngs["sample"], 2), x_in_BTN, rate
  )
  input_N = batch.get("input_mask", jnp.ones(x_BTN.shape[-1:], x_BTN.dtype))[None, None, :]
  loss_N = batch.get("loss_mask", jnp.ones(x_BTN.shape[-1:], x_BTN.dtype))[None, None, :]
  return x_in_BTN, loss_N * (1.0 - input_N + input_N * cd_BTN)


def _apply_grads(
  state: TrainState, tx, loss: jax.Array, grads: Any
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimiser update, frozen (with `diverged_at` set) on a non-finite loss or gradient."""
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.diverged_at < 0)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  diverged_at = jnp.where((state.diverged_at < 0) & ~ok, state.step, state.diverged_at)
  new_state = state.replace(
    step=state.step + 1,
    params=keep(params, state.params),
    opt_state=keep(opt_state, state.opt_state),
    diverged_at=diverged_at,
  )
  return new_state, {"train/loss": loss, "grads/norm": grad_norm}


def predict(
  params: Any,
  latent: jax.Array,
  x_VTN: jax.Array,
  input_mask_N: jax.Array | None = None,
  *,
  model: nn.Module,
) -> tuple[jax.Array, jax.Array]:
  """Raw output y and latents z of one model for windows x [windows, time, neurons]."""
  return model.apply({"params": params}, encoder_input(x_VTN, input_mask_N), latent)


def eval_step(
  params: Any,
  latent: jax.Array,
  x_VTN: jax.Array,
  input_mask_N: jax.Array | None = None,
  target_mask_N: jax.Array | None = None,
  *,
  model: nn.Module,
  likelihood: str = "gaussian",
) -> dict[str, jax.Array]:
  """Quick held-out metrics of one model on windows x [windows, time, neurons] (for progress):
  over the neurons of `target_mask_N` (default all); held out are those not in the input."""
  y_VTN, _ = predict(params, latent, x_VTN, input_mask_N, model=model)
  return heldout_metrics(y_VTN, x_VTN, input_mask_N, target_mask_N, likelihood)


def null_eval(
  null_N: jax.Array,
  x_VTN: jax.Array,
  input_mask_N: jax.Array | None = None,
  target_mask_N: jax.Array | None = None,
  *,
  likelihood: str = "gaussian",
) -> dict[str, jax.Array]:
  """`eval_step`'s metrics of the null prediction: each neuron's training mean, `null_N` [neurons]
  in the readout's units (what a zero-latent model predicts)."""
  y_VTN = jnp.broadcast_to(null_N, x_VTN.shape).astype(x_VTN.dtype)
  return heldout_metrics(y_VTN, x_VTN, input_mask_N, target_mask_N, likelihood)


def heldout_metrics(
  y_VTN: jax.Array,
  x_VTN: jax.Array,
  input_mask_N: jax.Array | None,
  target_mask_N: jax.Array | None,
  likelihood: str,
) -> dict[str, jax.Array]:
  """Loss and squared error of raw outputs y against x [windows, time, neurons], over the neurons
  of `target_mask_N` (default all), and on the held-out ones (not in `input_mask_N`)."""
  se_VTN = (mean_prediction(y_VTN, likelihood) - x_VTN) ** 2
  loss_VTN = elementwise_loss(y_VTN, x_VTN, likelihood)
  if target_mask_N is None:
    out = {"valid/loss": jnp.mean(loss_VTN), "valid/mse": jnp.mean(se_VTN)}
  else:
    n = jnp.sum(target_mask_N) * x_VTN.shape[0] * x_VTN.shape[1]
    out = {
      "valid/loss": jnp.sum(loss_VTN * target_mask_N[None, None, :]) / n,
      "valid/mse": jnp.sum(se_VTN * target_mask_N[None, None, :]) / n,
    }
  if input_mask_N is not None:  # held-out neurons: the co-smoothing error and loss
    held_N = (1.0 if target_mask_N is None else target_mask_N) - input_mask_N
    count = jnp.maximum(jnp.sum(held_N) * se_VTN.shape[0] * se_VTN.shape[1], 1.0)
    out["valid/cosmooth_mse"] = jnp.sum(se_VTN * held_N[None, None, :]) / count
    out["valid/cosmooth_loss"] = jnp.sum(loss_VTN * held_N[None, None, :]) / count
  return out
