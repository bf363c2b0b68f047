"""Where the data comes from and how one run happens: `DataSettings` and `RunSettings`, declared
once like `config.Settings` (which re-exports them)."""

from __future__ import annotations

import dataclasses

from nmas_jax.data import synthetic
from nmas_jax.declare import Declared, setting

DATASETS = (*synthetic.FAMILIES, "stringer", "array", "nwb")  # built-in, then recorded
NAN_POLICIES = ("freeze", "stop", "drop_neurons")
BATCHINGS = ("auto", "vmap", "by_latent")


@dataclasses.dataclass(frozen=True)
class DataSettings(Declared):
  """Which recording the command line loads, and how it is preprocessed."""

  dataset: str = setting(
    "synthetic",
    "The data: built-in families with known answers "
    "(synthetic: layers of 14, 20 and 30 signals read through sigmoidal tuning curves, a "
    "curved manifold; linear_gaussian: linear-Gaussian layers of dimension 7, 18, 40; "
    "nonlinear: a "
    "saturating readout of 3, 6, 12 signals; lorenz: Poisson counts of 3-D "
    "Lorenz latents; lorenz_trials: the same, whitened, in short trials from "
    "many initial conditions, the LFADS benchmark, with the true rates for "
    "rates_r2; independent: nothing shared; multiscale: 4 signals with "
    "correlation times around 2 bins and 3 around 50), or a recording.",
    choices=DATASETS,
  )
  data_path: str = setting(
    "", "Data file (stringer: .npy dict; array: .npy/.npz; nwb: .nwb).", path=True
  )
  data_key: str | None = setting(None, "Array name inside an .npz file.", kind="string")
  trials: bool = setting(
    False,
    "--dataset=array: the array is trials, [trials, time, neurons] "
    "or [layers, trials, time, neurons]; trials are split into training, "
    "validation and test by trial, and a window is a whole trial.",
  )
  layers: tuple[str, ...] = setting(
    (), "Layer names to keep (as in results.json); default all.", kind="list"
  )
  bin: int = setting(
    2,
    "Recorded data: average this many adjacent time bins (sum, for spike counts).",
    check="positive_int",
  )
  neurons_per_layer: int | None = setting(
    None,
    "Subsample each layer to this many neurons (default: the smallest layer's count).",
    kind="int",
    check="positive_int",
  )
  data_seed: int = setting(
    0, "Seed for subsampling neurons, the shuffle control and synthetic data.", check="nonneg_int"
  )
  nwb_series: str | None = setting(
    None,
    "NWB: name of the RoiResponseSeries to read, or 'units' "
    "for spikes; needed when the file has several.",
    kind="string",
  )
  bin_ms: float = setting(50.0, "NWB spikes: bin width in milliseconds.", check="positive")


@dataclasses.dataclass(frozen=True)
class RunSettings(Declared):
  """Where and how one run happens; never part of what a sweep computes."""

  workdir: str = setting("runs/sweep", "Output directory.", identity=False)
  checkpoint_every: int = setting(
    100, "Steps between checkpoints (0: only at the end).", check="nonneg_int", identity=False
  )
  keep_checkpoints: int = setting(
    3, "Checkpoints kept in <workdir>/checkpoints.", check="positive_int", identity=False
  )
  overwrite: bool = setting(
    False, "Replace a different sweep found in --workdir.", identity=False, record=False
  )
  nan_policy: str = setting(
    "freeze",
    "freeze: a diverging model is frozen and flagged, the others "
    "go on; stop: stop the sweep; drop_neurons: also drop neurons with "
    "NaN/Inf in the data (with a warning) instead of refusing the data.",
    choices=NAN_POLICIES,
    identity=False,
  )
  mesh: str = setting(
    "auto",
    "Device mesh: auto (all local devices on the models axis) or e.g. models:4,data:2.",
    identity=False,
  )
  batching: str = setting(
    "auto",
    "How one step runs the models: vmap (all at the widest latent), "
    "by_latent (one vmap per latent size, at its own width; one device) or "
    "auto (by_latent on one CPU device for sweeps of at least 3 GFLOP per "
    "step, else vmap). Results agree to float rounding.",
    choices=BATCHINGS,
    identity=False,
  )
  distributed: bool = setting(
    False,
    "Call jax.distributed.initialize (multi-host; from the flags "
    "below when given, else from the TPU/cluster environment).",
    identity=False,
    record=False,
  )
  coordinator_address: str | None = setting(
    None, "With --distributed: host:port of process 0.", kind="string", identity=False, record=False
  )
  num_processes: int | None = setting(
    None, "With --distributed: number of processes.", kind="int", identity=False, record=False
  )
  process_id: int | None = setting(
    None, "With --distributed: this process's index.", kind="int", identity=False, record=False
  )
  heartbeat_timeout_s: int = setting(
    60,
    "With --distributed: seconds after which a silent process "
    "counts as lost; the others name it and exit within this "
    "time.",
    check="positive_int",
    identity=False,
  )
