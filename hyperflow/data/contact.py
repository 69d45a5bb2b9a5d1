"""Look at a dataset: a contact-sheet PNG with one block per domain, and a summary dict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hyperflow.data.dataset import Dataset, Domain


def _mosaic(domain: Domain, classes_per_domain: int, images_per_class: int) -> np.ndarray:
    """uint8 [rows*(H+1), cols*(W+1), 3]: one row per class (evenly spaced over the domain)."""
    _, c, h, w = domain.images.shape
    rows = min(classes_per_domain, domain.num_classes)
    classes = np.linspace(0, domain.num_classes - 1, rows).round().astype(int)
    sheet = np.full((rows * (h + 1), images_per_class * (w + 1), 3), 128, dtype=np.uint8)
    for r, cls in enumerate(classes):
        idx = np.flatnonzero(domain.labels == cls)[:images_per_class]
        for col, i in enumerate(idx):
            img = domain.images[i].transpose(1, 2, 0)  # [H, W, C]
            sheet[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = (
                img if c == 3 else np.repeat(img, 3, axis=2)
            )
    return sheet


def contact_sheet(
    dataset: Dataset, path: str | Path, classes_per_domain: int = 6, images_per_class: int = 4
) -> Path:
    """Write a PNG grid: per domain a block titled "name (split, family)", one class per row."""
    names = dataset.names()
    assert names, f"dataset {dataset.spec!r} has no domains"
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    cell_w, cell_h = 0.55 * images_per_class + 0.3, 0.55 * classes_per_domain + 0.6
    # matplotlib here, not at the top: every process that imports hyperflow.data would load it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * cell_w, rows * cell_h), dpi=100)
    FigureCanvasAgg(fig)
    for k, name in enumerate(names):
        domain = dataset.domains[name]
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(_mosaic(domain, classes_per_domain, images_per_class), interpolation="nearest")
        ax.set_title(f"{name}\n({domain.split}, {domain.family})", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def dataset_info(dataset: Dataset) -> dict:
    """{"spec", "image_shape": [C, H, W], "domains": {name: {split, family, classes, images}}}."""
    shapes = {tuple(d.images.shape[1:]) for d in dataset.domains.values()}
    return {
        "spec": dataset.spec,
        "image_shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
        "domains": {
            name: {
                "split": d.split,
                "family": d.family,
                "classes": d.num_classes,
                "images": int(len(d.images)),
            }
            for name, d in dataset.domains.items()
        },
    }
