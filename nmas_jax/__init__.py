"""nmas-jax: how many dimensions does a neural population use? Batched LSTM-autoencoder latent sweeps."""

from nmas_jax.api import DimensionSweep
from nmas_jax.config import Settings
from nmas_jax.data import Dataset
from nmas_jax.errors import UserError
from nmas_jax.models import Decoder, Dense, Encoder, LSTMAutoencoder, ScanLSTM

__all__ = ["DimensionSweep", "Settings", "Dataset", "UserError", "LSTMAutoencoder", "Encoder",
           "Decoder", "ScanLSTM", "Dense"]
__version__ = "0.1.0"
