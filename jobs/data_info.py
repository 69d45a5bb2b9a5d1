"""`hyperflow data info --dataset SPEC`: domains, splits, classes and images per domain, and a PNG
contact sheet with a few classes of every domain."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperflow.data import load_dataset
from hyperflow.data.contact import contact_sheet, dataset_info


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["info"], help="what to do (info)")
    p.add_argument("--dataset", default="glyphs", help="dataset spec: glyphs | folder:PATH")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--sheet", default="contact_sheet.png", help="where to write the contact sheet")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> None:
    data = load_dataset(args.dataset, args.image_size, args.channels)
    info = dataset_info(data)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"{'domain':<22}{'split':<9}{'family':<10}{'classes':>8}{'images':>8}")
        for name, d in info["domains"].items():
            print(f"{name:<22}{d['split']:<9}{d['family']:<10}{d['classes']:>8}{d['images']:>8}")
    sheet = Path(args.sheet)
    contact_sheet(data, sheet)
    if not args.json:
        print(f"contact sheet: {sheet}")
