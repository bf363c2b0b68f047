"""A sweep's workdir while it trains: claimed for one sweep, its writers, checkpoints, watchdog."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax

from nmas_jax import files
from nmas_jax.config import RunSettings, Settings
from nmas_jax.reporting import results as results_lib
from nmas_jax.reporting import writers
from nmas_jax.training import checkpoint, hooks, sharding, sweep
from nmas_jax.training.table import ModelTable


def open_workdir(
  workdir, identity, run: RunSettings, flags_text: str, prep, cfg: Settings, log
) -> tuple[list, Any]:
  """Claims the workdir and opens its writers: ([(hook, close)], checkpointer or None)."""
  if workdir is None:
    return [], None
  sinks = []
  if jax.process_index() == 0:  # one writer: process 0
    checkpoint.prepare_workdir(workdir)
    resuming = checkpoint.claim_workdir(workdir, identity, run.overwrite)
    if flags_text:
      files.write_text(os.path.join(workdir, "flags.txt"), flags_text)
    table = ModelTable.for_sweep(prep, cfg)
    writer = writers.MetricWriter(
      workdir,
      [
        f"layer={prep.dataset.layer_names[l]},latent={k},seed={s}"
        + (f",neurons={c}" if c else "")
        + (f",bands={'-'.join(map(str, b))}" if len(b) else "")
        + (f",decoder={cfg.decoders[d[0]]}" if len(d) else "")
        + (f",member={m}" if cfg.population > 1 else "")
        for l, k, s, c, b, d, m in zip(
          table.layer,
          table.latent,
          table.seed,
          table.count,
          table.bands,
          table.decoder,
          table.member,
        )
      ],
    )
    partial = lambda o: files.write_json(
      os.path.join(workdir, "results.json"), results_lib.results_dict(prep, cfg, o)
    )
    sinks = [
      (hooks.Metrics(writer.write_scalars), writer.close),
      (hooks.PartialResults(partial), lambda: None),
    ]
  ckpt = checkpoint.Checkpointer(workdir, run.keep_checkpoints, log)  # every process takes part
  if sinks and resuming and ckpt.latest_step() is None:
    log("no checkpoint in the workdir yet: starting from step 0")
  return sinks, ckpt


def run(
  prep, cfg: Settings, run_cfg: RunSettings, workdir, identity, flags_text: str, mesh, log
) -> sweep.SweepOutput:
  """`sweep.run_sweep` with the workdir's writers, checkpointer and (several hosts) watchdog;
  without a workdir, nothing is written."""
  sinks, ckpt = open_workdir(workdir, identity, run_cfg, flags_text, prep, cfg, log)
  watchdog = (
    sharding.Watchdog(
      workdir, run_cfg.heartbeat_timeout_s, lambda: checkpoint.latest_complete_step(workdir)
    )
    if ckpt is not None
    else contextlib.nullcontext()
  )
  try:
    with watchdog:
      return sweep.run_sweep(
        prep,
        cfg,
        hooks=[h for h, _ in sinks],
        checkpointer=ckpt,
        checkpoint_every=run_cfg.checkpoint_every,
        mesh=mesh,
        log=log,
        nan_policy="stop" if run_cfg.nan_policy == "stop" else "freeze",
        batching=run_cfg.batching,
      )
  finally:
    for _, close in sinks + ([(None, ckpt.close)] if ckpt is not None else []):
      close()
