"""Data layer: readers (tidy CSV/parquet, Amazon 2023, LC-Rec json, RecBole atomic), the
paper's preparation protocol, the prepared dataset format and its splits, bundled samples."""
from resid.data.builtin import default_cache_dir, list_builtin, open_dataset, resolve_raw
from resid.data.dataset import PreparedDataset, Split, is_prepared, load_prepared, save_prepared
from resid.data.prepare import kcore, prepare
from resid.data.raw import RawDataset
from resid.data.readers import FORMATS, detect_format, read_raw

__all__ = [
    "FORMATS", "PreparedDataset", "RawDataset", "Split", "default_cache_dir", "detect_format", "is_prepared",
    "kcore", "list_builtin", "load_prepared", "open_dataset", "prepare", "read_raw", "resolve_raw", "save_prepared",
]
