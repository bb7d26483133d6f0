"""Atomic writes and safe names: no output is ever visible half-written."""
from __future__ import annotations

import hashlib
import json
import functools
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import DscoError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]")


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once: reading it means setting it, which races with other threads' file creation."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safe_name(name: str) -> str:
    """Escape a class name so it is one path component that stays inside its folder."""
    if not isinstance(name, str) or name == "" or "\x00" in name:
        raise DscoError(f"invalid class name {name!r}: empty or contains NUL")
    escaped = _UNSAFE.sub(lambda m: f"%{ord(m.group(0)):02X}", name)
    if escaped in {".", ".."}:
        escaped = escaped.replace(".", "%2E")
    return escaped


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _reported_os_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise DscoError(f"cannot write {path}: {e.strerror or e}") from e


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename over the target."""
    path = Path(path)
    with _reported_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary name only
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; rename it into place only on success."""
    final = Path(final)
    with _reported_os_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    try:
        with _reported_os_errors(final):
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
