"""Files a sweep leaves behind: results.json, results.csv, sweep.png, and a text table.

Every file is written to a temporary name and renamed, so a reader never sees
a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from typing import Any, Callable

import numpy as np

CSV_FIELDS = ("layer", "latent", "seed", "train_loss", "valid_mse", "valid_loss", "diverged_at_step")


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it into place."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, indent=1))


def write_csv(path: str, results: dict[str, Any]) -> None:
  """One row per model."""

  def write(f):
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for m in results["models"]:
      w.writerow({k: ("" if m.get(k) is None else m.get(k)) for k in CSV_FIELDS})

  atomic_write(path, write)


def curves(results: dict[str, Any], field: str = "valid_mse") -> dict[str, dict[int, list[float]]]:
  """{layer: {latent: [value per seed]}}, skipping missing (diverged) values."""
  out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
  for m in results["models"]:
    if m.get(field) is not None:
      out[m["layer"]][m["latent"]].append(m[field])
  return out


def plot_sweep(results: dict[str, Any], field: str = "valid_mse"):
  """Held-out error vs latent size, one line per layer (mean and min-max over seeds)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  true_latent = results.get("true_latent") or {}
  for i, (layer, by_latent) in enumerate(curves(results, field).items()):
    c = colors[i % len(colors)]
    ks = sorted(by_latent)
    vals = [np.asarray(by_latent[k]) for k in ks]
    mean = np.array([v.mean() for v in vals])
    ax.plot(ks, mean, "o-", color=c, label=f"layer {layer}")
    if any(len(v) > 1 for v in vals):
      ax.fill_between(ks, [v.min() for v in vals], [v.max() for v in vals], color=c, alpha=0.2)
    if layer in true_latent:
      ax.axvline(true_latent[layer], color=c, ls="--", lw=1)
  ax.set_xscale("log")
  ax.set_xticks(results["latents"])
  ax.set_xticklabels([str(k) for k in results["latents"]])
  ax.set_xlabel("latent size")
  ax.set_ylabel(f"held-out {field.replace('valid_', '').upper()}")
  title = f"{results['dataset']}: {results['decoder']} decoder, {results['steps']} steps"
  if true_latent:
    title += " (dashed: true dimension)"
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def save_figure(path: str, fig) -> None:
  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def table(results: dict[str, Any], field: str = "valid_mse") -> str:
  """A text table: rows are layers, columns latent sizes, cells mean over seeds."""
  by_layer = curves(results, field)
  latents = results["latents"]
  head = f"{'layer':>8} " + " ".join(f"{'k=' + str(k):>10}" for k in latents)
  if results.get("true_latent"):
    head += f" {'true':>6}"
  lines = [f"held-out {field} (mean over seeds)", head]
  for layer in results["layers"]:
    cells = [by_layer[layer][k] for k in latents]
    row = f"{layer:>8} " + " ".join(f"{np.mean(c):>10.4g}" if c else f"{'diverged':>10}" for c in cells)
    if results.get("true_latent"):
      row += f" {results['true_latent'][layer]:>6}"
    lines.append(row)
  return "\n".join(lines)


def write_all(workdir: str, results: dict[str, Any]) -> list[str]:
  """Writes results.json, results.csv and sweep.png; returns their paths."""
  paths = [os.path.join(workdir, n) for n in ("results.json", "results.csv", "sweep.png")]
  write_json(paths[0], results)
  write_csv(paths[1], results)
  save_figure(paths[2], plot_sweep(results))
  return paths
