"""Our Flax LSTM encoder inside another JAX model: decode a behavioural variable from latents.

Call signature:
  Encoder(hidden, latent)(x [batch, time, neurons], latent_size=None) -> z [batch, time, latent]
Its weights can start from a trained sweep: est.state_.params["encoder"][model_index].
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nmas_jax import DimensionSweep, Encoder
from nmas_jax.data import synthetic

quick = os.environ.get("NMAS_QUICK") == "1"


class BehaviourDecoder(nn.Module):
  """x [batch, time, neurons] -> behaviour [batch, time]: our encoder, then a linear readout."""

  hidden: int
  latent: int
  bidirectional: bool = True

  @nn.compact
  def __call__(self, x_BTN):
    z_BTK = Encoder(
      hidden=self.hidden, latent=self.latent, bidirectional=self.bidirectional, name="encoder"
    )(x_BTN)
    return nn.Dense(1, name="readout")(z_BTK)[..., 0]


# Data: synthetic activity; a smoothed population signal plays the behavioural variable.
ds = synthetic.make_linear_gaussian(true_latents=(4,), neurons=40, time=600, seed=0)
raw_TN = ds.x_LTN[0]
behaviour_T = np.convolve(raw_TN.mean(axis=1), np.ones(5) / 5, mode="same")

# 1. A latent sweep; take the encoder of the chosen model.
est = DimensionSweep(
  latents=(2, 4, 8),
  hidden=32,
  window=25,
  steps=5 if quick else 300,
  learning_rate=1e-2,
  verbose=False,
).fit(raw_TN)
x_TN = est.preprocess(raw_TN)  # the activity as the sweep's models saw it (z-scored)
k = est.optimal_latent_["0"] or 2  # 0 would mean no shared structure: take the smallest model
i = est.model_index(k, "0")
trained_encoder = jax.tree.map(lambda a: a[i], est.state_.params["encoder"])
print(f"chosen latent size {k}; encoder weights from sweep model {i}")
# The embedded module with those weights is the sweep's encoder: same latent trajectory.
w = est.config_.window
x_in = x_TN[None, :w] * est.input_mask("0")  # the sweep hid its held-out neurons from the encoder
encoder = Encoder(
  hidden=32, latent=max(est.config_.latents), bidirectional=est.config_.bidirectional
)
z_own = encoder.apply({"params": trained_encoder}, jnp.asarray(x_in))
print(
  f"max |z - est.transform(x)| on one window: "
  f"{float(np.max(np.abs(np.asarray(z_own[0, :, :k]) - est.transform(raw_TN[:w], latent=k)))):.2e}"
)

# 2. Build the user's model with the sweep's (padded) latent width and load the encoder weights.
width = max(est.config_.latents)
model = BehaviourDecoder(hidden=32, latent=width, bidirectional=est.config_.bidirectional)
x_BTN = jnp.asarray(x_TN[None, :500])
y_BT = jnp.asarray(behaviour_T[None, :500])
params = model.init(jax.random.PRNGKey(0), x_BTN)["params"]
params = {**params, "encoder": trained_encoder}

# 3. Fine-tune everything with optax.
tx = optax.adam(3e-3)
opt = tx.init(params)


@jax.jit
def step(params, opt):
  loss, g = jax.value_and_grad(lambda p: jnp.mean((model.apply({"params": p}, x_BTN) - y_BT) ** 2))(
    params
  )
  updates, opt = tx.update(g, opt, params)
  return optax.apply_updates(params, updates), opt, loss


for _ in range(5 if quick else 300):
  params, opt, loss = step(params, opt)
test = model.apply({"params": params}, jnp.asarray(x_TN[None, 500:]))[0]
r = np.corrcoef(np.asarray(test), behaviour_T[500:])[0, 1]
print(f"final train MSE {float(loss):.4f}; held-out correlation with behaviour {r:.2f}")
