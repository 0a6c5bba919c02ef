"""`resid datasets`: list the bundled real datasets (usable as builtin:<name>)."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list the bundled datasets (use them as builtin:<name>)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resid.data.builtin import list_builtin

    infos = list_builtin()
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    header = f"{'name':<28} {'users':>7} {'items':>7} {'events':>8}  {'text':<4}  fields"
    print(header)
    for i in infos:
        print(f"{'builtin:' + i['name']:<28} {i['users']:>7,} {i['items']:>7,} {i['events']:>8,}  {'yes' if i['text'] else 'no':<4}  {','.join(i['fields'])}")
    return 0
