"""resid: ReSID semantic-ID generative recommenders (arXiv 2602.02338).

Pipeline: FAMAE item embeddings -> GAOQ semantic IDs -> T5 generator with trie beam search.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["FAMAE", "FAMAEConfig", "GAOQ", "GAOQConfig", "Generator", "GeneratorConfig", "Recommender", "__version__"]

# Lazy exports (PEP 562): `import resid` (and the CLI's --help) stays fast; torch loads on first use.
_LAZY = {"FAMAE": "resid.famae", "FAMAEConfig": "resid.famae", "GAOQ": "resid.gaoq", "GAOQConfig": "resid.gaoq",
         "Generator": "resid.generator", "GeneratorConfig": "resid.generator", "Recommender": "resid.recommender"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resid' has no attribute {name!r}")
