"""One storage layer for every artifact: a local path or any URL fsspec resolves.

    loc = location("s3://bucket/runs/store")      # or "runs/store", "file:///abs", "gs://..."
    loc.write_bytes("commits/zarr/shard-000012.json", blob)
    loc.read_bytes("manifest.json")
    loc.child("traj.zarr").url                     # what zarr / webdataset / torch are handed

Keys are POSIX paths relative to the location. A write is atomic per object: object stores
have atomic PUT; on a local disk the bytes go to a temp file that is fsynced and renamed into
place, and the directory is fsynced after the rename, so a reader (or a killed writer) never
sees a torn object and a written object survives a power loss. Nothing else needs rename.

Endpoint and credentials come from the standard variables of each backend (for S3:
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...): nothing here
takes, logs or writes them. Backends are optional extras: `pip install hyperflow-engine[s3]`.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from engine.errors import UserError

_EXTRAS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


class StorageError(UserError):
    """A backend failed (no credentials, access denied, no such bucket, endpoint down)."""

    def __init__(self, where: str, cause: str):
        super().__init__(f"storage {where!r}: {cause}")
        self.cause = cause


def _user_errors(method):
    # A backend's own failures (no credentials, access denied, no such bucket, endpoint down)
    # become one UserError naming the URL and the cause: the CLI prints it and exits 2.
    # FileNotFoundError passes through: callers use it to mean "not there (yet)".
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, UserError, TypeError, AttributeError, AssertionError):
            raise  # not there (yet), already explained, or a bug: as they are
        except Exception as e:
            if self.local and isinstance(e, (IsADirectoryError, NotADirectoryError)):
                raise
            where = self.child(args[0]).url if args and isinstance(args[0], str) else self.url
            raise StorageError(where, f"{type(e).__name__}: {_first_line(e)}") from None

    return wrapper


@dataclass(frozen=True)
class Location:
    """A directory-like place: a local directory or a prefix of a bucket."""

    url: str  # as the user gave it, normalised: no trailing slash
    fs: fsspec.AbstractFileSystem
    root: str  # the location in fs's own path syntax (bucket/prefix, or an absolute path)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, key: str = "") -> str:
        """fs path of `key` (relative POSIX path) under this location."""
        return f"{self.root}/{key}".rstrip("/") if key else self.root

    def child(self, key: str) -> Location:
        """The location of `key` under this one."""
        return Location(_join(self.url, key), self.fs, self.path(key))

    def local_path(self, key: str = "") -> Path | None:
        """A local Path of `key` (for memory-mapping), None on remote storage."""
        return Path(self.path(key)) if self.local else None

    @_user_errors
    def exists(self, key: str = "") -> bool:
        return self.fs.exists(self.path(key))

    @_user_errors
    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    @_user_errors
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object whole (see module docstring: atomic, durable on local disk)."""
        if not self.local:
            self.fs.pipe_file(self.path(key), data)
            return
        final = Path(self.path(key))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)

    @_user_errors
    def open(self, key: str, mode: str = "rb"):
        """A file object of `key` (streams on remote storage)."""
        return self.fs.open(self.path(key), mode)

    @_user_errors
    def list(self, key: str = "") -> list[str]:
        """Names (not paths) of the entries directly under `key`; [] if there are none."""
        try:
            entries = self.fs.ls(self.path(key), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    @_user_errors
    def find(self, key: str = "") -> dict[str, int]:
        """Every object under `key` -> its size, keys relative to `key`, sorted."""
        base = self.path(key)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        if self.fs.isfile(base):
            return {"": int(found[base]["size"])} if base in found else {}
        cut = len(base.rstrip("/")) + 1
        return {p[cut:]: int(d["size"]) for p, d in sorted(found.items())}

    @_user_errors
    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    @_user_errors
    def remove(self, key: str) -> None:
        """Delete an object or everything under a prefix; nothing there is fine."""
        p = self.path(key)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def makedirs(self, key: str = "") -> None:
        """Local directories only: object stores have no directories to create."""
        if self.local:
            Path(self.path(key)).mkdir(parents=True, exist_ok=True)


def _join(url: str, key: str) -> str:
    return f"{url.rstrip('/')}/{key}" if key else url


def location(url: str | os.PathLike) -> Location:
    """The Location of a local path or URL; UserError if no backend serves its scheme."""
    text = os.fspath(url)
    if not text:
        raise UserError("empty path or URL")
    scheme = text.split("://", 1)[0] if "://" in text else ""
    try:
        fs, root = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as e:
        extra = _EXTRAS.get(scheme)
        hint = f"; install it with `pip install {extra}`" if extra else ""
        raise UserError(f"no storage backend for {text!r}: {e}{hint}") from None
    if isinstance(fs, LocalFileSystem):
        root = str(Path(root).resolve())
        text = str(Path(text.removeprefix("file://")).resolve()) if not scheme else text
    return Location(text.rstrip("/") if len(text) > 1 else text, fs, root.rstrip("/") or "/")


def check_access(loc: Location, write: bool, what: str) -> None:
    """Fail before any work starts (UserError naming `what` and the URL) unless `loc` can be
    read (write=False: it must exist) or written (a probe object is written and removed)."""
    try:
        if not write:
            if not loc.exists():
                raise UserError(f"{what} {loc.url!r} does not exist")
            return
        if loc.local:  # no probe: a failed job must not leave even an empty directory behind
            p = Path(loc.root)
            if p.exists() and not p.is_dir():
                raise UserError(f"{what} {loc.url!r} is an existing file, not a directory")
            while not p.exists():
                p = p.parent
            if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"{what} {loc.url!r} is not writable ({p} is not)")
            return
        probe = f".hyperflow-probe-{uuid.uuid4().hex[:12]}"
        loc.write_bytes(probe, b"")
        loc.remove(probe)
    except StorageError as e:  # name the flag, the place and the cause only
        raise UserError(
            f"{what} {loc.url!r} is not {'writable' if write else 'readable'}: {e.cause}"
        ) from None
    except FileNotFoundError as e:  # e.g. no such bucket
        raise UserError(
            f"{what} {loc.url!r} is not {'writable' if write else 'readable'}: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else "no details"


def _fsync_dir(path: Path) -> None:
    # the rename lives in the directory entry: without this a power loss after os.replace can
    # leave the old object (or none) even though the new bytes were fsynced
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
