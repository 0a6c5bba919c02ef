"""Baselines reported beside ReSID: SASRec, SASRec* (with structured fields) and popularity."""
from resid.baselines.popularity import popularity_metrics
from resid.baselines.sasrec import SASRec, SASRecConfig

__all__ = ["SASRec", "SASRecConfig", "popularity_metrics"]
