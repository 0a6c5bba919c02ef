"""resid: ReSID semantic-ID generative recommenders (arXiv 2602.02338).

Pipeline: FAMAE item embeddings -> GAOQ semantic IDs -> T5 generator with trie beam search.
"""
from __future__ import annotations

__version__ = "0.1.0"

from resid.gaoq import GAOQ, GAOQConfig  # noqa: E402

__all__ = ["GAOQ", "GAOQConfig", "__version__"]
