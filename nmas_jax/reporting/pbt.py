"""What a population-based sweep reports (--population): report.md's table of the winning
hyper-parameters per latent size, and pbt.png, the members' hyper-parameters over steps."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def section(results: dict[str, Any]) -> list[str]:
  """report.md: per latent size, the mean (geometric for those drawn log-uniform) and range of
  the winners' final hyper-parameters over layers and seeds, and how many tournaments were
  played."""
  pop = results.get("population")
  if not pop:
    return []
  names = list(pop["ranges"])  # the tuned hyper-parameters
  won: dict[int, list[dict]] = defaultdict(list)
  for i in pop["winners"]:
    won[pop["members"][i]["latent"]].append(pop["members"][i])
  lines = [
    "## Population-based training",
    "",
    f"{pop['size']} members per model, a binary tournament every {pop['every']} steps on the "
    f"selection block (bins {pop['selection_block'][0]}-{pop['selection_block'][1]} of the "
    f"training block, which training windows leave out; {len(pop['steps']) - 1} rounds). Each "
    "model in the tables above is its group's winner: the member whose best state scored lowest "
    "on the selection block. Its final hyper-parameters (mean over layers and seeds, geometric "
    "for those drawn log-uniform; range in brackets):",
    "",
    "| latent | " + " | ".join(names) + " |",
    "|---" * (len(names) + 1) + "|",
  ]
  for k in sorted(won):
    cells = []
    for n in names:
      v = np.array([m[n][-1] for m in won[k]])
      mean = np.exp(np.log(v).mean()) if _log(pop, n) else v.mean()
      cells.append(f"{mean:.2g} [{v.min():.2g}, {v.max():.2g}]")
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  return lines + ["", "pbt.png shows every member's hyper-parameters over the steps.", ""]


def plot(results: dict[str, Any]):
  """One panel per hyper-parameter: every member's value over steps (log scale for those drawn
  log-uniform), coloured by latent size."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  pop = results["population"]
  names = list(pop["ranges"])
  latents = sorted({m["latent"] for m in pop["members"]})
  colours = plt.cm.viridis(np.linspace(0, 0.9, len(latents)))
  fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3.6), squeeze=False)
  axes = axes[0]
  for ax, n in zip(axes, names):
    for m in pop["members"]:
      c = colours[latents.index(m["latent"])]
      ax.step(pop["steps"], m[n], where="post", color=c, alpha=0.6, lw=1)
    ax.set_yscale("log" if _log(pop, n) else "linear")
    ax.set_xlabel("step")
    ax.set_title(n.replace("_", " "), fontsize=10)
  for k, c in zip(latents, colours):
    axes[0].plot([], [], color=c, label=f"latent {k}")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def _log(pop: dict[str, Any], name: str) -> bool:
  """Whether hyper-parameter `name` was drawn log-uniform (results.json before `log_scale`: all
  were)."""
  return pop.get("log_scale", {}).get(name, True)
