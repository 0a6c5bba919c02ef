"""Data layer: the prepared dataset format and its splits."""
from resid.data.dataset import PreparedDataset, Split, is_prepared, load_prepared, save_prepared

__all__ = ["PreparedDataset", "Split", "is_prepared", "load_prepared", "save_prepared"]
