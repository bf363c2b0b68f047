"""Shared test settings: strict shapes, CPU, small sizes."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
