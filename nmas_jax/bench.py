"""Throughput of the batched sweep step, the one-by-one loop, and this machine's matmul peak."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from nmas_jax import data as data_lib
from nmas_jax import models, sharding, sweep, train


@dataclasses.dataclass(frozen=True)
class Shapes:
  neurons: int = 1131
  window: int = 50
  batch_size: int = 16
  hidden: int = 128
  latents: tuple[int, ...] = (10, 25, 50, 75, 150)
  layers: int = 1
  decoder: str = "lstm"
  unroll: int = 1
  dtype: str = "float32"
  batching: str = "auto"


def flops_per_step(s: Shapes) -> float:
  """Analytic FLOPs of one training step of every model (forward + backward), useful work only.

  Encoder LSTM -> latent Dense -> decoder LSTM (or none) -> readout Dense, at
  each model's own latent size k. A matmul costs 2mnk forward and twice that
  backward, except the encoder's input projection, whose input needs no gradient.
  """
  bt, n, h = s.batch_size * s.window, s.neurons, s.hidden
  total = 0.0
  for k in s.latents:
    enc_in = 2 * bt * n * 4 * h * 2          # forward + weight gradient only
    enc_rec = 2 * bt * h * 4 * h * 3
    to_lat = 2 * bt * h * k * 3
    if s.decoder == "lstm":
      dec = (2 * bt * k * 4 * h + 2 * bt * h * 4 * h) * 3 + 2 * bt * h * n * 3
    else:
      dec = 2 * bt * k * n * 3
    total += enc_in + enc_rec + to_lat + dec
  return total * s.layers


def _time_interleaved(calls: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]],
                      steps: int, repeats: int = 3) -> dict[str, float]:
  """Seconds per call of each named (fn, block) pair: the best of `repeats` rounds.

  Each round times every fn in turn (2 warm-up calls, then `steps` calls), so a
  slow phase of a shared machine (here up to 20% for seconds at a time) hits
  every contender alike instead of whichever happened to run then.
  """
  best = {name: float("inf") for name in calls}
  for _ in range(repeats):
    for name, (fn, block) in calls.items():
      for _ in range(2):
        block(fn())
      t0 = time.perf_counter()
      for _ in range(steps):
        out = fn()
      block(out)
      best[name] = min(best[name], (time.perf_counter() - t0) / steps)
  return best


def _time(fn: Callable[[], Any], steps: int, block=jax.block_until_ready, repeats: int = 3) -> float:
  """Seconds per call of fn (returning something to block on): best of `repeats` runs."""
  return _time_interleaved({"fn": (fn, block)}, steps, repeats)["fn"]


def matmul_peak_gflops(n: int = 2048, dtype=jnp.float32, reps: int = 10) -> float:
  """Achieved GFLOP/s of a large square matmul: this machine's practical peak."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  mm = jax.jit(lambda a, b: a @ b)
  return 2 * n ** 3 / _time(lambda: mm(a, b), reps) / 1e9


def torch_loop_step(s: Shapes) -> tuple[Callable[[], Any], Callable[[Any], Any]] | None:
  """(step, block) of a plain PyTorch loop over the same models (None without torch).

  What a user would write: per model nn.LSTM(N, H) -> Linear(H, k) -> nn.LSTM(k, H)
  (or nothing, for the linear decoder) -> Linear(H, N), MSE, clipping, AdamW,
  on its own random batch of windows, one model after another.
  """
  try:
    import torch
  except ImportError:
    return None
  torch.manual_seed(0)

  class AE(torch.nn.Module):
    def __init__(self, k):
      super().__init__()
      self.enc = torch.nn.LSTM(s.neurons, s.hidden, batch_first=True)
      self.lat = torch.nn.Linear(s.hidden, k)
      self.dec = torch.nn.LSTM(k, s.hidden, batch_first=True) if s.decoder == "lstm" else None
      self.out = torch.nn.Linear(s.hidden if s.decoder == "lstm" else k, s.neurons)

    def forward(self, x):
      z = self.lat(self.enc(x)[0])
      return self.out(self.dec(z)[0] if self.dec is not None else z)

  nets = [AE(k) for _ in range(s.layers) for k in s.latents]
  opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0) for m in nets]
  data = torch.randn(s.window * 40, s.neurons)
  offsets = torch.arange(s.window)

  def step():
    for m, opt in zip(nets, opts):
      x = data[torch.randint(0, s.window * 32 - s.window, (s.batch_size,))[:, None] + offsets]
      loss = ((m(x) - x) ** 2).mean()
      opt.zero_grad()
      loss.backward()
      torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
      opt.step()
    return loss

  return (lambda: step().detach()), (lambda out: out.item())


def torch_loop_seconds(s: Shapes, steps: int) -> float | None:
  """Seconds per step of `torch_loop_step` on its own (None without torch)."""
  pair = torch_loop_step(s)
  return None if pair is None else _time(pair[0], steps, block=pair[1])


def run(s: Shapes, steps: int = 20, loop: bool = True, torch_loop: bool = True,
        log=print) -> dict[str, Any]:
  """Times (a) one batched sweep step, (b) the one-by-one loop, (c) the matmul peak,
  and (d) a PyTorch loop over the same models when torch is installed."""
  dtype = jnp.bfloat16 if s.dtype == "bfloat16" else jnp.float32
  cfg = sweep.SweepConfig(latents=tuple(s.latents), steps=1, batch_size=s.batch_size,
                          window=s.window, hidden=s.hidden, decoder=s.decoder, unroll=s.unroll,
                          heldout_neurons=0.0, likelihood="gaussian", dtype=s.dtype)
  num_time = s.window * 40
  x_LTN = jax.random.normal(jax.random.PRNGKey(0), (s.layers, num_time, s.neurons), jnp.float32)
  t_train = int(num_time * 0.8)
  real = sweep.ModelTable.build(s.layers, cfg.latents, 1)
  mesh = sharding.make_mesh("auto")  # every device on the models axis, as the sweep does
  table = real.padded(sharding.padded_size(len(real), mesh))
  by_model, rep = sharding.models_sharding(mesh), sharding.replicated(mesh)
  model = sweep.make_model(cfg, s.neurons)
  tx = train.make_optimizer()
  x_LTN = jax.device_put(x_LTN, rep)
  mask_LN = jax.device_put(jnp.ones((s.layers, s.neurons), jnp.float32), rep)
  layer_M, seed_M = (jax.device_put(jnp.asarray(a), by_model) for a in (table.layer, table.seed))
  batching = sweep.resolve_batching(s.batching, mesh)
  step_fn = sweep.make_step_fn(model, tx, "gaussian", mesh, t_train=t_train, window=s.window,
                               batch_size=s.batch_size, table=table, batching=batching)
  state = sweep.StepLayout(model, table, batching, mesh).pack(
      sweep.init_sweep(cfg, table, s.neurons, out_sharding=by_model))
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, x_LTN, mask_LN, layer_M, seed_M, jnp.int32(0)).compile()
  compile_s = time.perf_counter() - t0
  box = [state]

  def sweep_call():
    box[0], m = compiled(box[0], x_LTN, mask_LN, layer_M, seed_M, jnp.int32(0))
    return m["train/loss"]

  lanes = getattr(compiled, "lanes", 1)
  log(f"sweep step: {len(real)} models on {mesh.devices.size} device(s), batching {batching}"
      f"{f' on {lanes} CPU lanes' if lanes > 1 else ''}, compiled in {compile_s:.1f}s")
  calls = {"sweep": (sweep_call, jax.block_until_ready)}

  loop_compile_s = None
  if loop:
    singles = []
    t0 = time.perf_counter()
    for i in range(len(real)):
      k, layer = int(real.latent[i]), int(real.layer[i])
      m = models.LSTMAutoencoder(neurons=s.neurons, latent=k, hidden=s.hidden, decoder=s.decoder,
                                 unroll=s.unroll, dtype=dtype)

      def one(st, x_LTN, layer=layer, m=m):
        x_BTN = data_lib.sample_batches(x_LTN, jnp.array([layer]), jnp.array([0]), st.step,
                                        t_train=t_train, window=s.window, batch_size=s.batch_size)[0]
        return train.train_step(st, {"x": x_BTN}, model=m, tx=tx)

      st = train.init_state(jax.random.PRNGKey(i), k, 3e-3, 0.0, model=m, clip_norm=1.0,
                            example_x_BTN=jnp.zeros((1, s.window, s.neurons)))
      fn = jax.jit(one, donate_argnums=0).lower(st, x_LTN).compile()
      singles.append([fn, st])
    loop_compile_s = time.perf_counter() - t0

    def loop_call():
      out = None
      for pair in singles:
        pair[1], metrics = pair[0](pair[1], x_LTN)
        out = metrics["train/loss"]
      return out

    calls["loop"] = (loop_call, jax.block_until_ready)
    log(f"loop of single-model steps: compiled in {loop_compile_s:.1f}s")

  if torch_loop:
    pair = torch_loop_step(s)
    if pair is None:
      log("PyTorch loop: torch is not installed")
    else:
      calls["torch"] = pair
  repeats = 3
  log(f"timing {', '.join(calls)}: best of {repeats} interleaved rounds of {steps} steps each")
  seconds = _time_interleaved(calls, steps, repeats)
  sweep_s, loop_s, torch_s = (seconds.get(name) for name in ("sweep", "loop", "torch"))
  log("  ".join(f"{name} {t * 1e3:.1f} ms" for name, t in seconds.items()))
  peak = matmul_peak_gflops(dtype=jnp.float32)
  flops = flops_per_step(s)
  achieved = flops / sweep_s / 1e9
  dev = jax.devices()[0]
  return {
      "sweep_step_ms": round(sweep_s * 1e3, 3),
      "loop_step_ms": None if loop_s is None else round(loop_s * 1e3, 3),
      "speedup_vs_loop": None if loop_s is None else round(loop_s / sweep_s, 3),
      "torch_loop_step_ms": None if torch_s is None else round(torch_s * 1e3, 3),
      "speedup_vs_torch": None if torch_s is None else round(torch_s / sweep_s, 3),
      "flops_per_step": flops,
      "achieved_gflops": round(achieved, 2),
      "peak_gflops": round(peak, 2),
      "mfu": round(achieved / peak, 4),
      "compile_s": round(compile_s, 2),
      "loop_compile_s": None if loop_compile_s is None else round(loop_compile_s, 2),
      "models": len(real),
      "padded_models": len(table),
      "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
      "devices": jax.device_count(),
      "lanes": lanes,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()},
      "batching": batching,
      "steps": steps,
      "repeats": repeats,
  }


def table(r: dict[str, Any]) -> str:
  rows = [("device", r["device"]), ("models", r["models"]),
          ("shapes", f"neurons={r['neurons']} window={r['window']} batch={r['batch_size']} "
                     f"hidden={r['hidden']} latents={','.join(map(str, r['latents']))} "
                     f"decoder={r['decoder']} dtype={r['dtype']} batching={r['batching']} "
                     f"lanes={r['lanes']}"),
          ("sweep step (all models, one call)", f"{r['sweep_step_ms']:.1f} ms"),
          ("one-by-one loop", "-" if r["loop_step_ms"] is None else f"{r['loop_step_ms']:.1f} ms"),
          ("speed-up vs loop", "-" if r["speedup_vs_loop"] is None else f"{r['speedup_vs_loop']:.2f}x"),
          ("PyTorch loop", "-" if r["torch_loop_step_ms"] is None else f"{r['torch_loop_step_ms']:.1f} ms"),
          ("speed-up vs PyTorch", "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x"),
          ("useful GFLOP per step", f"{r['flops_per_step'] / 1e9:.2f}"),
          ("achieved GFLOP/s", f"{r['achieved_gflops']:.1f}"),
          ("f32 matmul peak GFLOP/s", f"{r['peak_gflops']:.1f}"),
          ("MFU (achieved / peak)", f"{r['mfu']:.1%}"),
          ("compile (sweep / loop)", f"{r['compile_s']:.1f}s / "
                                     f"{'-' if r['loop_compile_s'] is None else r['loop_compile_s']}s")]
  w = max(len(a) for a, _ in rows)
  return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)
