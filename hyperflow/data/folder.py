"""`folder:PATH`: any image tree, as `PATH/<domain>/<class>/<image>` or `PATH/<class>/<image>`.

Layout detection: if PATH's (non-empty, non-hidden) subdirectories hold image files directly,
they are classes of one domain named after PATH's basename; if none does, they are domains whose
subdirectories are classes; a mix of both is an error. Inside a class folder every non-hidden
file must be a readable image (PNG/JPEG or anything else Pillow opens); names are sorted, so
labels follow the sorted class folder names.

Conversion: transparency is composited over white (what an image viewer shows); 16-bit images
are scaled to 8 bit; then the image becomes grey (channels=1) or RGB (channels=3). Resizing
keeps the whole picture and its aspect ratio: it is padded to a square with the median colour
of its border, then resized (bicubic, antialiased) to image_size x image_size.

Every domain from a folder is split "heldout", family "clean": folders are for evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hyperflow.data.dataset import Dataset, Domain
from hyperflow.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _visible(entries) -> list[Path]:
    return sorted((p for p in entries if not p.name.startswith(".")), key=lambda p: p.name)


def _subdirs(path: Path) -> list[Path]:
    return [p for p in _visible(path.iterdir()) if p.is_dir() and _visible(p.iterdir())]


def _has_images(path: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def _layout(root: Path) -> list[tuple[str, Path]]:
    """[(domain name, folder whose subfolders are classes)]."""
    subdirs = _subdirs(root)
    if not subdirs:
        raise UserError(f"folder {str(root)!r} has no class or domain subfolders with images")
    flat = [d for d in subdirs if _has_images(d)]
    if len(flat) == len(subdirs):
        return [(root.resolve().name, root)]
    if not flat:
        return [(d.name, d) for d in subdirs]
    nested = [d.name for d in subdirs if d not in flat]
    raise UserError(
        f"folder {str(root)!r} mixes class folders holding images ({flat[0].name!r}) with "
        f"folders holding only subfolders ({nested[0]!r}); use PATH/<class>/<image> or "
        "PATH/<domain>/<class>/<image>"
    )


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float32)
        a = a / 257.0 if a.max() > 255 else a  # 16-bit range -> 8-bit
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def _read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """uint8 [C, image_size, image_size]."""
    try:
        with Image.open(path) as img:
            img.load()
            img = _to_mode(img, channels)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise UserError(f"{str(path)!r} is not a readable image ({e})") from e
    a = np.asarray(img).reshape(img.height, img.width, channels)  # [h, w, C]
    h, w = a.shape[:2]
    side = max(h, w)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # [2w+2h, C]
    square = np.empty((side, side, channels), dtype=np.uint8)
    square[:] = np.median(border, axis=0).astype(np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = a
    img = Image.fromarray(square[..., 0] if channels == 1 else square)
    img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(img).reshape(image_size, image_size, channels).transpose(2, 0, 1)


def _load_domain(name: str, folder: Path, image_size: int, channels: int) -> Domain | None:
    images, labels, classes = [], [], []
    for class_dir in (d for d in _visible(folder.iterdir()) if d.is_dir()):
        files = [p for p in _visible(class_dir.iterdir()) if p.is_file()]
        if not files:
            continue
        for f in files:
            images.append(_read_image(f, image_size, channels))
            labels.append(len(classes))
        classes.append(class_dir.name)
    if not images:
        return None
    return Domain(
        name=name,
        split="heldout",
        family="clean",
        images=np.stack(images),
        labels=np.array(labels, dtype=np.int64),
        class_names=classes,
    )


def load_folder(path: str | Path, image_size: int = 32, channels: int = 1) -> Dataset:
    """All images under path as a Dataset (layout detected as described in the module doc)."""
    assert channels in (1, 3), f"channels must be 1 or 3, got {channels}"
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset folder {str(path)!r} does not exist or is not a folder")
    domains = {}
    for name, folder in _layout(root):
        domain = _load_domain(name, folder, image_size, channels)
        if domain is not None:
            domains[name] = domain
    if not domains:
        raise UserError(f"folder {str(path)!r} contains no images")
    return Dataset(spec=f"folder:{path}", domains=domains)
