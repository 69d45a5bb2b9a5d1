"""How far a collection task space is from each shift family, in the target's feature statistics.

`python -m hyperflow.evaluation.family_distance --target DIR [--images N] [--exclude a,b]
[--dataset glyphs-wide]` (the target's base dataset: its base glyphs are the images measured)

The same base-domain glyphs go through each family (held-out families too, on base glyphs, so the
script does not count) and through the frozen target. A set of images is summarised by the mean
and std of every feature over its images; the distance of two sets is the Frechet distance of
diagonal Gaussians, sqrt(|mu_a - mu_b|^2 + |sd_a - sd_b|^2), divided by |sd| of the clean glyphs
(the clean set's own spread = 1). Procedural images come in episodes of EPISODE images, each with
its own composition; `--exclude` leaves primitives out as collect.procedural_exclude does.
Prints a JSON document: distances of each source (clean, the default collection mix, procedural,
procedural without the excluded) to each family, and each primitive's distance to each family.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from hyperflow.data import load_dataset
from hyperflow.data.primitives import PRIMITIVES
from hyperflow.data.procedural import Primitive, apply_composition, episode_composition
from hyperflow.data.shifts import apply_shift
from hyperflow.model import load_target

FAMILIES = ("invert", "clutter", "elastic", "noise", "blur", "contrast", "thick")
COLLECTED = ("noise", "blur", "contrast", "thick")  # the default collect.shifts
EPISODE = 25  # images per procedural episode: a 5-way 5-shot support set


def feature_stats(model, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], std [F]) of the target's features over uint8 images [N, C, H, W]."""
    feats = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = model.preprocess(torch.from_numpy(images[i : i + batch]))
            feats.append(model.features(x).double().numpy())
    f = np.concatenate(feats)
    return f.mean(axis=0), f.std(axis=0)


def distance(a: tuple, b: tuple, scale: float) -> float:
    return float(np.sqrt(((a[0] - b[0]) ** 2).sum() + ((a[1] - b[1]) ** 2).sum()) / scale)


def _episodes(images: np.ndarray, seed: int, compose) -> np.ndarray:
    # one composition per EPISODE images, as collection draws one per episode
    out = [
        compose(images[i : i + EPISODE], seed + k)
        for k, i in enumerate(range(0, len(images), EPISODE))
    ]
    return np.concatenate(out)


def _procedural(exclude: tuple[str, ...]):
    def compose(x, s):
        rng = np.random.default_rng([s, 1])
        return apply_composition(x, episode_composition(s, exclude), rng)

    return compose


def _single(name: str):
    def compose(x, s):
        rng = np.random.default_rng([s, 2])
        return apply_composition(x, [Primitive(name, PRIMITIVES[name].draw(rng))], rng)

    return compose


def _mix(x, s):
    # the default collection: a quarter clean, else one collected family per episode
    rng = np.random.default_rng([s, 3])
    if rng.random() < 0.25:
        return x
    return apply_shift(COLLECTED[int(rng.integers(len(COLLECTED)))], x, [s, 1])


def measure(
    target: str,
    n: int = 1000,
    exclude: tuple[str, ...] = (),
    seed: int = 0,
    dataset: str = "glyphs",
) -> dict:
    """Distances (module docstring) on n base images of `dataset` drawn with `seed`."""
    model = load_target(target).eval()
    torch.set_num_threads(1)
    data = load_dataset(dataset, model.cfg.image_size, model.cfg.channels, None)
    base = np.concatenate([data.domains[d].images for d in data.names("base")])
    images = base[np.random.default_rng(seed).choice(len(base), n, replace=False)]
    stats = lambda x: feature_stats(model, x)  # noqa: E731
    clean = stats(images)
    scale = float(np.sqrt((clean[1] ** 2).sum()))
    fam = {f: stats(apply_shift(f, images, [seed, i])) for i, f in enumerate(FAMILIES)}
    sources = {
        "clean": clean,
        "collection mix (25% clean, noise/blur/contrast/thick)": stats(
            _episodes(images, seed, _mix)
        ),
        "procedural": stats(_episodes(images, seed, _procedural(()))),
    }
    if exclude:
        name = f"procedural without {', '.join(exclude)}"
        sources[name] = stats(_episodes(images, seed, _procedural(exclude)))
    prims = {p: stats(_episodes(images, seed, _single(p))) for p in PRIMITIVES}
    row = lambda s: {f: round(distance(s, fam[f], scale), 3) for f in FAMILIES}  # noqa: E731
    return {
        "target": target,
        "dataset": dataset,
        "images": n,
        "seed": seed,
        "sources": {k: row(v) for k, v in sources.items()},
        "primitives": {k: row(v) for k, v in prims.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--exclude", default="", help="comma-separated primitives to leave out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="glyphs", help="dataset spec whose base images to use")
    args = p.parse_args(argv)
    exclude = tuple(x for x in args.exclude.split(",") if x)
    doc = measure(args.target, args.images, exclude, args.seed, args.dataset)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
