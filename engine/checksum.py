"""Shard checksums and store verification.

sha256 of a shard:
- a file (WebDataset tar): sha256 of its bytes, so `sha256sum shard-000012.tar` agrees;
- a directory (Zarr group): sha256 over its files sorted by relative POSIX path, each fed as
  path bytes, NUL, 8-byte little-endian size, file bytes. Independent of the directory's own
  name, so a shard hashed under its temp name keeps its hash after the rename.
"""

import hashlib
import os
from pathlib import Path

from engine.manifest import Manifest, ShardInfo

_BLOCK = 1 << 20


def _feed_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def tree_files(path: Path) -> list[Path]:
    """Files of a shard (the file itself, or every file under a directory), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.as_posix())


def sha256_path(path: Path) -> str:
    """Hex sha256 of a shard file or shard directory (see module docstring)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        _feed_file(h, path)
        return h.hexdigest()
    assert path.is_dir(), f"{path} is neither a file nor a directory"
    for p in tree_files(path):
        h.update(p.relative_to(path).as_posix().encode() + b"\0")
        h.update(os.path.getsize(p).to_bytes(8, "little"))
        _feed_file(h, p)
    return h.hexdigest()


def size_path(path: Path) -> int:
    """Total bytes of a shard's files."""
    return sum(os.path.getsize(p) for p in tree_files(path))


def check_shard(root: Path, info: ShardInfo) -> list[str]:
    """Problems of one committed shard (missing, size or sha256 mismatch); [] if intact."""
    p = Path(root) / info.path
    who = f"shard {info.name} ({info.format}, {info.path})"
    if not p.exists():
        return [f"{who}: missing"]
    problems = []
    size, digest = size_path(p), sha256_path(p)
    if size != info.bytes:
        problems.append(f"{who}: {size} bytes on disk, manifest says {info.bytes}")
    if digest != info.sha256:
        problems.append(f"{who}: sha256 {digest[:12]}.. != manifest {info.sha256[:12]}..")
    return problems


def verify(root: Path) -> list[str]:
    """Re-hash every committed shard; one message per problem, each naming its shard."""
    m = Manifest.load(root)
    return [msg for s in m.shards for msg in check_shard(root, s)]
