"""`hyperflow inspect STORE [--verify] [--json]`: records, shards, bytes, bytes per record, records
per domain and the config a store was made with; --verify recomputes every shard checksum and exits
non-zero naming each bad shard."""

from __future__ import annotations

import argparse
import json
import sys

from engine.inspect import format_report, inspect_store


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "store", help="a store written by `hyperflow collect`: a directory or a URL (s3://...)"
    )
    p.add_argument("--verify", action="store_true", help="recompute and check every checksum")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> None:
    report = inspect_store(args.store, verify=args.verify)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if args.verify and not report["verify"]["ok"]:
        bad = ", ".join(report["verify"]["bad_shards"])
        print(f"hyperflow inspect: checksum mismatch in {bad}", file=sys.stderr)
        sys.exit(1)
