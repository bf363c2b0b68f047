"""LFADS (nmas_jax.models.LFADS) inside your own Flax/optax training loop, on Lorenz spike counts.

  x [trials, time, neurons] -> (log-rates [trials, time, neurons], factors [trials, time, latent])

The KL terms are sown into the "losses" collection; `model.penalty` weights them and the
recurrent-kernel L2 with a linear warm-up. The sweep (`--model=lfads`) trains the same module.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nmas_jax import models
from nmas_jax.data import lorenz

quick = os.environ.get("NMAS_QUICK") == "1"

# Data: a 3-D Lorenz system driving 30 Poisson neurons, cut into 240 trials of 50 bins;
# 200 trials train, 40 are held out.
ds = lorenz.make_lorenz(neurons=30, time=12000, seed=0)
x = ds.x_LTN[0].reshape(240, 50, 30)
train_x, test_x = jnp.asarray(x[:200]), jnp.asarray(x[200:])

# No controller (co_dim=0): the Lorenz system runs without inputs, and this is 3x faster.
model = models.LFADS(
  neurons=30, latent=3, gen_dim=32, ic_enc_dim=32, co_dim=0, dropout=0.3, warmup_steps=50
)
params = model.init(jax.random.PRNGKey(0), train_x)["params"]
# Start the readout at each neuron's mean log-rate (the null), as the sweep does.
params["readout"]["bias"] = jnp.log(jnp.maximum(train_x.mean(axis=(0, 1)), 1e-3))
tx = optax.adam(5e-3)
opt = tx.init(params)


def poisson_nll(log_rate, counts):
  return jnp.mean(jnp.exp(log_rate) - counts * log_rate)


@jax.jit
def step(params, opt, i):
  def loss(p):
    (y, _), aux = model.apply(
      {"params": p},
      train_x,
      sample=True,
      rngs={
        "sample": jax.random.PRNGKey(i),
        "dropout": jax.random.fold_in(jax.random.PRNGKey(i), 1),
      },
      mutable=["losses"],
    )
    return poisson_nll(y, train_x) + model.penalty(p, aux["losses"], i, train_x[0].size)

  value, grads = jax.value_and_grad(loss)(params)
  updates, opt = tx.update(grads, opt, params)
  return optax.apply_updates(params, updates), opt, value


steps = 300 if quick else 1000
for i in range(steps):
  params, opt, value = step(params, opt, i)
  if (i + 1) % (steps // 4) == 0:
    print(f"step {i + 1}: training loss {float(value):.4f}")

# Held-out trials: deterministic rates (posterior means), against each neuron's training mean.
log_rate, factors = model.apply({"params": params}, test_x)
null = jnp.broadcast_to(jnp.log(jnp.maximum(train_x.mean(axis=(0, 1)), 1e-3)), test_x.shape)
spikes = float(test_x.sum())
bps = (
  (float(poisson_nll(null, test_x)) - float(poisson_nll(log_rate, test_x)))
  * test_x.size
  / spikes
  / np.log(2)
)
print(f"factors: {tuple(factors.shape)}")
print(f"held-out trials: {bps:.3f} bits/spike over each neuron's mean rate")
