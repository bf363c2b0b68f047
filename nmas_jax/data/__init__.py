"""Data: the `Dataset` container and its checks (`dataset`, re-exported here), built-in
generators with known answers (`synthetic`), recorded-data loaders (`loaders`), and the splits
and batches a sweep trains on (`splits`)."""

from nmas_jax.data.dataset import (
  SHUFFLED_SUFFIX,
  Dataset,
  as_dataset,
  as_layers,
  bin_time,
  check_file,
  check_finite,
  check_numeric,
  is_counts,
  normalize,
  with_shuffle_control,
)

__all__ = [
  "SHUFFLED_SUFFIX",
  "Dataset",
  "as_dataset",
  "as_layers",
  "bin_time",
  "check_file",
  "check_finite",
  "check_numeric",
  "is_counts",
  "normalize",
  "with_shuffle_control",
]
