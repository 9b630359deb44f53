"""The on-disk engine cache: build once, load on the next compile, never stale.

An entry's key hashes everything the built file depends on: the segment's
graph code, its input specs, the lowering and its options, the versions of
the tools, and a digest of the weights baked into it.  So a changed weight or
option misses the cache instead of reusing a stale engine.  Each entry is
stored with the sha256 of its bytes; a file that no longer matches (a
truncated write, a flipped bit) is reported, deleted and rebuilt, never loaded.
Writes go to a temporary name first and are renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple

import torch

DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "speca_compile"


def weights_digest(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class EngineCache:
    """One directory of ``<key><suffix>`` files, each beside a ``.sha256``."""

    def __init__(self, directory: Optional[str]):
        self.directory = Path(directory) if directory else DEFAULT_DIR
        self.events: List[Tuple[str, str]] = []   # (event, file): hit, miss, corrupt

    def path(self, key: str, suffix: str) -> Path:
        return self.directory / f"{key}{suffix}"

    def lookup(self, key: str, suffix: str) -> Optional[Path]:
        """The cached file for ``key`` if it is there and matches its checksum (nothing is built)."""
        target = self.path(key, suffix)
        checksum = target.with_name(target.name + ".sha256")
        if target.exists() and checksum.exists() and checksum.read_text().strip() == file_digest(target):
            return target
        return None

    def get_or_build(self, key: str, suffix: str, build: Callable[[Path], None]) -> Path:
        """The verified cached file for ``key``, building it with ``build(path)`` on a miss."""
        target = self.path(key, suffix)
        checksum = target.with_name(target.name + ".sha256")
        if target.exists():
            if checksum.exists() and checksum.read_text().strip() == file_digest(target):
                self.events.append(("hit", str(target)))
                return target
            self.events.append(("corrupt", str(target)))
            warnings.warn(f"speca: engine cache file {target} does not match its checksum; "
                          "it was deleted and is being rebuilt", RuntimeWarning, stacklevel=2)
            target.unlink(missing_ok=True)
            checksum.unlink(missing_ok=True)
        else:
            self.events.append(("miss", str(target)))
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key}.", suffix=suffix, dir=self.directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            build(tmp)
            digest = file_digest(tmp)
            os.replace(tmp, target)
            checksum.write_text(digest + "\n")
        finally:
            tmp.unlink(missing_ok=True)
        return target
