"""Throughput of the batched sweep step, the one-by-one loop, and this machine's matmul peak."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import config, data, declare, models
from nmas_jax.config import BATCHINGS, DECODERS, DTYPES
from nmas_jax.data import batches, splits
from nmas_jax.declare import setting
from nmas_jax.training import sweep, train

BENCH_MODELS = ("autoencoder", "lfads")
TORCH_TWINS = ("autoencoder",)  # the families `torch_loop_step` has a PyTorch twin of


@dataclasses.dataclass(frozen=True)
class Shapes(declare.Declared):
  """What the benchmark times (its own defaults: one Stringer layer, the LSTM decoder)."""

  neurons: int = setting(1131, "Neurons per layer.", check="positive_int")
  window: int = setting(50, "Window length (time steps).", check="positive_int")
  batch_size: int = setting(16, "Windows per batch.", check="positive_int")
  hidden: int = setting(128, "LSTM units.", check="positive_int")
  latents: tuple[int, ...] = setting(
    (10, 25, 50, 75, 150), "Latent sizes (one model each).", kind="ints"
  )
  layers: int = setting(
    1, "Layers (models = layers x (1 + counts) x seeds x latents).", check="positive_int"
  )
  seeds: int = setting(1, "Seeds per (layer, latent).", check="positive_int")
  neuron_counts: tuple[int, ...] = setting(
    (),
    "Also the sweep's --neuron_counts axis: models whose encoder sees only this many neurons.",
    kind="ints",
  )
  decoder: str = setting("lstm", "The decoder.", choices=DECODERS)
  unroll: int = setting(1, "Scan unroll factor.", check="positive_int")
  dtype: str = setting("float32", "Matmul dtype.", choices=DTYPES)
  batching: str = setting(
    "auto",
    "How the sweep step runs the models (see experiments.sweep --batching).",
    choices=BATCHINGS,
  )
  model: str = setting(
    "autoencoder",
    "The model (lfads: the sweep's LFADS at its default sizes, "
    "no controller; --hidden and --decoder do not apply).",
    choices=BENCH_MODELS,
  )
  co_dim: int = setting(
    0, "--model=lfads: inferred inputs per time step (0: no controller).", check="nonneg_int"
  )

  def __post_init__(self):
    super().__post_init__()
    if max(self.latents) > self.neurons:
      raise config.UserError(f"latent size {max(self.latents)} exceeds --neurons={self.neurons}")
    if self.neuron_counts and max(self.neuron_counts) >= self.neurons:
      raise config.UserError(
        f"--neuron_counts must be below --neurons={self.neurons}, got {max(self.neuron_counts)}"
      )

  def settings(self) -> config.Settings:
    """The sweep settings of these shapes: no held-out neurons, Gaussian, a causal encoder, no
    linear skip and no dropout (the models the PyTorch loop and `flops_per_step` describe)."""
    return config.Settings(
      latents=self.latents,
      batch_size=self.batch_size,
      window=self.window,
      hidden=self.hidden,
      decoder=self.decoder,
      unroll=self.unroll,
      dtype=self.dtype,
      heldout_neurons=0.0,
      likelihood="gaussian",
      steps=1,
      seeds=self.seeds,
      neuron_counts=self.neuron_counts,
      bidirectional=False,
      dropout=0.0,
      linear_skip=False,
      model=self.model,
      co_dim=self.co_dim,  # LFADS: 0, no controller
    )

  def model_neurons(self) -> list[int]:
    """Neurons each model's encoder reads, one entry per (count level, seed) of a layer: the full
    layer, then each of --neuron_counts."""
    return [c for c in (self.neurons, *self.neuron_counts) for _ in range(self.seeds)]


def flops_per_step(s: Shapes) -> float:
  """Analytic FLOPs of one training step of every model (forward + backward), useful work only:
  the family's `step_flops` at each model's own latent size; a model of the --neuron_counts axis
  counts only its own neurons (its encoder input and its readout)."""
  fam, cfg = models.family(s.model), s.settings()
  return s.layers * sum(fam.step_flops(cfg, n, s.batch_size, s.window) for n in s.model_neurons())


def _time_interleaved(
  calls: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]], steps: int, repeats: int = 3
) -> dict[str, float]:
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


def _time(
  fn: Callable[[], Any], steps: int, block=jax.block_until_ready, repeats: int = 3
) -> float:
  """Seconds per call of fn (returning something to block on): best of `repeats` runs."""
  return _time_interleaved({"fn": (fn, block)}, steps, repeats)["fn"]


def matmul_peak_gflops(n: int | None = None, dtype=jnp.float32, reps: int = 10) -> float:
  """Achieved GFLOP/s of a large square matmul in `dtype`: this machine's practical peak
  (n=2048 on CPU; 8192 on an accelerator, where a smaller product is overhead-bound)."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  mm = jax.jit(lambda a, b: a @ b)
  return 2 * n**3 / _time(lambda: mm(a, b), reps) / 1e9


def torch_loop_step(s: Shapes) -> tuple[Callable[[], Any], Callable[[Any], Any]] | None:
  """(step, block) of a plain PyTorch loop over the same models (None without torch).

  What a user would write: per model nn.LSTM(N, H) -> Linear(H, k) -> nn.LSTM(k, H)
  (or nothing, for the linear decoder) -> Linear(H, N), MSE, clipping, AdamW,
  on its own random batch of windows, one model after another (a --neuron_counts model on its
  own number of neurons).
  """
  try:
    import torch
  except ImportError:
    return None
  torch.manual_seed(0)

  class AE(torch.nn.Module):
    def __init__(self, k, n):
      super().__init__()
      self.n = n
      self.enc = torch.nn.LSTM(n, s.hidden, batch_first=True)
      self.lat = torch.nn.Linear(s.hidden, k)
      self.dec = torch.nn.LSTM(k, s.hidden, batch_first=True) if s.decoder == "lstm" else None
      self.out = torch.nn.Linear(s.hidden if s.decoder == "lstm" else k, n)

    def forward(self, x):
      z = self.lat(self.enc(x)[0])
      return self.out(self.dec(z)[0] if self.dec is not None else z)

  nets = [AE(k, n) for _ in range(s.layers) for n in s.model_neurons() for k in s.latents]
  opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0) for m in nets]
  data = torch.randn(s.window * 40, s.neurons)
  offsets = torch.arange(s.window)

  def step():
    for m, opt in zip(nets, opts):
      x = data[
        torch.randint(0, s.window * 32 - s.window, (s.batch_size,))[:, None] + offsets, : m.n
      ]
      loss = ((m(x) - x) ** 2).mean()
      opt.zero_grad()
      loss.backward()
      torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
      opt.step()
    return loss

  return (lambda: step().detach()), (lambda out: out.item())


def _sweep_call(s: Shapes) -> tuple[Callable[[], Any], sweep.Built, float]:
  """(one step of every model, the sweep as `sweep.run_sweep` builds it, compile seconds)."""
  cfg = s.settings()
  x_LTN = np.random.default_rng(0).standard_normal((s.layers, s.window * 40, s.neurons))
  prep = splits.prepare(
    data.Dataset(x_LTN.astype(np.float32), tuple(map(str, range(s.layers))), "bench"), cfg
  )
  built = sweep.build(prep, cfg, batching=s.batching)
  box = [built.stepper.pack(built.init_states())]
  t0 = time.perf_counter()
  built.stepper.compile(box[0])
  compile_s = time.perf_counter() - t0

  def call():
    box[0], m = built.stepper.step(box[0], 0)
    return m["train/loss"]

  return call, built, compile_s


def _loop_call(s: Shapes, built: sweep.Built) -> tuple[Callable[[], Any], float]:
  """(one step of each model in turn, each its own jitted single-model step; compile seconds).

  Models of the same shape (latent size, neurons) share one executable; the layer is an argument.
  """
  x_LTN, t_train, tx = built.placed.x_LTN, built.prep.t_train, built.tx
  singles, compiled = [], {}
  t0 = time.perf_counter()
  for i in range(built.n_real):
    k, layer = int(built.table.latent[i]), int(built.table.layer[i])
    n = int(built.table.count[i]) or s.neurons  # a --neuron_counts model reads its own neurons
    m = models.make_model(dataclasses.replace(s.settings(), latents=(k,)), n)

    def one(st, x_LTN, layer_1, m=m, n=n):
      x_BTN = batches.sample_batches(
        x_LTN,
        layer_1,
        jnp.array([0]),
        st.step,
        t_train=t_train,
        window=s.window,
        batch_size=s.batch_size,
      )[0]
      return train.train_step(st, {"x": x_BTN[..., :n]}, model=m, tx=tx)

    st = train.init_state(
      jax.random.PRNGKey(i), k, model=m, tx=tx, example_x_BTN=jnp.zeros((1, s.window, n))
    )
    layer_1 = jnp.array([layer])
    if (k, n) not in compiled:
      compiled[k, n] = jax.jit(one, donate_argnums=0).lower(st, x_LTN, layer_1).compile()
    singles.append([compiled[k, n], st, layer_1])
  compile_s = time.perf_counter() - t0

  def call():
    out = None
    for pair in singles:
      pair[1], metrics = pair[0](pair[1], x_LTN, pair[2])
      out = metrics["train/loss"]
    return out

  return call, compile_s


def run(
  s: Shapes, steps: int = 20, loop: bool = True, torch_loop: bool = True, log=print
) -> dict[str, Any]:
  """Times (a) one batched sweep step, built exactly as `sweep.run_sweep` builds it, (b) the
  one-by-one loop, (c) the matmul peak, and (d) a PyTorch loop over the same models when torch is
  installed."""
  sweep_call, built, compile_s = _sweep_call(s)
  log(
    f"sweep step: {built.n_real} models on {built.mesh.devices.size} device(s), batching "
    f"{built.stepper.description}, compiled in {compile_s:.1f}s"
  )
  calls = {"sweep": (sweep_call, jax.block_until_ready)}
  loop_compile_s = None
  if loop:
    loop_call, loop_compile_s = _loop_call(s, built)
    calls["loop"] = (loop_call, jax.block_until_ready)
    log(f"loop of single-model steps: compiled in {loop_compile_s:.1f}s")
  if torch_loop and s.model not in TORCH_TWINS:
    log(f"PyTorch loop: written for {', '.join(TORCH_TWINS)} only, not --model={s.model}")
  elif torch_loop:
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
  peak = matmul_peak_gflops(dtype=jnp.dtype(s.dtype))
  flops = flops_per_step(s)
  achieved = flops / sweep_s / 1e9
  dev = jax.devices()[0]
  mem = dev.memory_stats() or {}  # none on CPU
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
    "models": built.n_real,
    "padded_models": len(built.table),
    "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
    "devices": jax.device_count(),
    "peak_memory_gib": (
      round(mem["peak_bytes_in_use"] / 2**30, 3) if "peak_bytes_in_use" in mem else None
    ),
    "lanes": built.stepper.lanes,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()},
    "batching": built.stepper.batching,
    "steps": steps,
    "repeats": repeats,
  }


def table(r: dict[str, Any]) -> str:
  rows = [
    ("device", r["device"]),
    ("models", f"{r['models']} ({r.get('model', 'autoencoder')})"),
    (
      "shapes",
      f"neurons={r['neurons']} counts={','.join(map(str, r['neuron_counts'])) or '-'} "
      f"seeds={r['seeds']} window={r['window']} batch={r['batch_size']} "
      f"hidden={r['hidden']} latents={','.join(map(str, r['latents']))} "
      f"decoder={r['decoder']} dtype={r['dtype']} batching={r['batching']} "
      f"lanes={r['lanes']}",
    ),
    ("sweep step (all models, one call)", f"{r['sweep_step_ms']:.1f} ms"),
    ("one-by-one loop", "-" if r["loop_step_ms"] is None else f"{r['loop_step_ms']:.1f} ms"),
    ("speed-up vs loop", "-" if r["speedup_vs_loop"] is None else f"{r['speedup_vs_loop']:.2f}x"),
    (
      "PyTorch loop",
      "-" if r["torch_loop_step_ms"] is None else f"{r['torch_loop_step_ms']:.1f} ms",
    ),
    (
      "speed-up vs PyTorch",
      "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x",
    ),
    ("useful GFLOP per step", f"{r['flops_per_step'] / 1e9:.2f}"),
    ("achieved GFLOP/s", f"{r['achieved_gflops']:.1f}"),
    (f"{r['dtype']} matmul peak GFLOP/s", f"{r['peak_gflops']:.1f}"),
    (
      "peak device memory",
      "-" if r.get("peak_memory_gib") is None else f"{r['peak_memory_gib']:.2f} GiB",
    ),
    ("MFU (achieved / peak)", f"{r['mfu']:.1%}"),
    (
      "compile (sweep / loop)",
      f"{r['compile_s']:.1f}s / {'-' if r['loop_compile_s'] is None else r['loop_compile_s']}s",
    ),
  ]
  w = max(len(a) for a, _ in rows)
  return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def pbt_overhead(
  population: int = 4, every: int = 25, steps: int = 100, repeats: int = 2, log=print
) -> dict[str, Any]:
  """The cost of a population's rounds (`training.population`): the main job's data at latents
  10, 25, 50 with one seed and `population` members, trained `steps` steps (no stopping) with a
  round every `every` steps and with none (the same models, data and compiled step),
  interleaved `repeats` times; the best training seconds of each."""
  from nmas_jax.data import synthetic

  base = config.Settings(
    latents=(10, 25, 50),
    seeds=1,
    steps=steps,
    stop_patience=0,
    log_every=steps,
    population=population,
    baselines=(),
  )
  prep = splits.prepare(synthetic.make_synthetic(), base)
  best = {"rounds": float("inf"), "none": float("inf")}
  for r in range(repeats):
    for name, pe in (("rounds", every), ("none", steps + 1)):
      out = sweep.run_sweep(prep, dataclasses.replace(base, pbt_every=pe), log=lambda s: None)
      best[name] = min(best[name], out.seconds)
      log(f"repeat {r + 1}/{repeats}, {name}: {out.seconds:.2f} s")
  models = len(out.table) * population  # the winners, times the members
  return {
    "models": models,
    "population": population,
    "every": every,
    "steps": steps,
    "rounds": steps // every,
    "seconds_with_rounds": round(best["rounds"], 3),
    "seconds_without": round(best["none"], 3),
    "overhead": round(best["rounds"] / best["none"] - 1, 4),
    "round_ms": round(1e3 * (best["rounds"] - best["none"]) / max(steps // every, 1), 1),
  }
