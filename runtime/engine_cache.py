"""The on-disk engine cache: build once, load on the next compile, never stale.

An entry's key hashes everything the built file depends on: the segment's
graph code, its input specs, the lowering and its options, the versions of
the tools, and a digest of the weights baked into it.  So a changed weight or
option misses the cache instead of reusing a stale engine.  Each entry is
stored with the sha256 of its bytes; a file that no longer matches (a
truncated write, a flipped bit) is reported, deleted and rebuilt, never loaded.

Several processes (and threads) may share one directory, e.g. workers of a
server compiling the same model at start-up.  So that each engine is built
once and nobody mistakes another's half-finished write for corruption:

* **A lock per entry.**  Checking, building and deleting an entry happens
  while holding ``fcntl.flock`` on ``<key><suffix>.lock`` (the lock files stay:
  deleting a lock file while another process waits on it would let a third
  lock a new file under the same name).  A second process waits on the lock,
  then finds the file built by the first: a cache hit.  The kernel releases a
  flock when its holder dies, so a killed build never leaves the entry locked.
  Threads of one process also serialise on an in-process lock per entry.
* **Checksum first.**  The data and its checksum are written to temporary
  names and renamed into place (``os.replace``, atomic), the checksum before
  the data, so a reader that sees a data file always finds the checksum
  written for it.  Reads take no lock; a reader that finds a mismatch checks
  again under the lock (the file may have been replaced meanwhile) before it
  declares the entry corrupt and deletes it.
* **No leftovers.**  Temporary files are named ``.<key>.XXXXXXXX<suffix>`` (and
  that name plus ``.sha256``); under an entry's lock nobody else can be
  writing them, so any found there belong to a build that was killed
  (SIGKILL, power loss) and are removed.

Without ``fcntl`` (Windows) or where the filesystem refuses ``flock`` (some
network mounts), entries are still written atomically and checksum first, so
readers never see a torn file; only the one-build-across-processes guarantee
is lost (two processes may both build; the second rename wins, with identical
contents), and stale temporary files are removed only once they are a day old.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; see the module docstring for what is lost
    fcntl = None

DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "speca_compile"

# a temporary file is only deleted unlocked (no flock available) once it is this old:
# nobody can tell a dead build from a slow live one without a lock, and a day outlasts any build
STALE_UNLOCKED_SECONDS = 24 * 3600


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


_thread_locks: Dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    """One in-process lock per lock-file path, shared by every ``EngineCache`` of that directory.

    ``flock`` alone would already serialise threads (each ``open`` is its own open file
    description, and those conflict), but not where ``flock`` is unavailable."""
    name = os.path.abspath(path)
    with _thread_locks_guard:
        return _thread_locks.setdefault(name, threading.Lock())


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[bool]:
    """Hold the lock file ``path`` exclusively (threads and processes); yields whether other
    processes are excluded too (False without a working ``flock``)."""
    with _thread_lock(path):
        if fcntl is None:
            yield False
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
            except OSError:   # a filesystem without flock (some network mounts): as on Windows
                locked = False
            yield locked
        finally:
            os.close(fd)   # releases the flock (and the kernel does so if this process dies)


def _digest_matches(target: Path, checksum: Path) -> bool:
    """Whether ``target`` is there with the checksum written for it.

    Races with a writer read as a mismatch (never as a match), e.g. a file deleted between
    the two reads; callers re-check under the entry lock before acting on a mismatch."""
    try:
        return checksum.read_text().strip() == file_digest(target)
    except FileNotFoundError:
        return False


class EngineCache:
    """One directory of ``<key><suffix>`` files, each beside a ``.sha256`` and a ``.lock``."""

    def __init__(self, directory: Optional[str]):
        self.directory = Path(directory) if directory else DEFAULT_DIR
        self.events: List[Tuple[str, str]] = []   # (event, file): hit, miss, corrupt

    def path(self, key: str, suffix: str) -> Path:
        return self.directory / f"{key}{suffix}"

    def lock_path(self, key: str, suffix: str) -> Path:
        return self.directory / f"{key}{suffix}.lock"

    @contextlib.contextmanager
    def locked(self, key: str, suffix: str) -> Iterator[None]:
        """Hold the entry ``key``'s lock, with the temporary files of killed builds of it removed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with entry_lock(self.lock_path(key, suffix)) as exclusive:
            self._remove_stale_temps(key, suffix, exclusive)
            yield

    def lookup(self, key: str, suffix: str) -> Optional[Path]:
        """The cached file for ``key`` if it is there and matches its checksum (nothing is built,
        no lock taken: a file being written is not there yet, because it is renamed into place)."""
        target = self.path(key, suffix)
        return target if _digest_matches(target, self._checksum(target)) else None

    def get_or_build(self, key: str, suffix: str, build: Callable[[Path], None]) -> Path:
        """The verified cached file for ``key``, building it with ``build(path)`` on a miss."""
        return self.fetch(key, suffix, build)[0]

    def fetch(self, key: str, suffix: str, build: Callable[[Path], None]) -> Tuple[Path, str]:
        """``get_or_build``, and what happened: ``"hit"``, ``"miss"`` or ``"corrupt"`` (rebuilt).

        The event is returned rather than read back from ``events``, which threads building
        other entries of the same cache append to at the same time.

        A hit takes no lock.  Anything else is decided again under the entry lock, because
        while this process waited another may have built the file (then it is a hit), and a
        mismatch seen without the lock may have been a replacement in progress."""
        target = self.path(key, suffix)
        checksum = self._checksum(target)
        if _digest_matches(target, checksum):
            return target, self._record("hit", target)
        with self.locked(key, suffix):
            if target.exists():
                if _digest_matches(target, checksum):
                    return target, self._record("hit", target)
                event = self._record("corrupt", target)
                warnings.warn(f"speca: engine cache file {target} does not match its checksum; "
                              "it was deleted and is being rebuilt", RuntimeWarning, stacklevel=3)
                target.unlink(missing_ok=True)   # data first: a checksum alone reads as a miss
                checksum.unlink(missing_ok=True)
            else:
                event = self._record("miss", target)
            self._build(key, suffix, build)
        return target, event

    def write_text(self, key: str, suffix: str, text: str) -> Path:
        """Write a small file of the cache (e.g. a ``.family`` pointer) atomically, under its lock:
        a reader sees the old text or the new one, never a torn one."""
        target = self.path(key, suffix)
        with self.locked(key, suffix):
            tmp = self._temp(key, suffix)
            try:
                tmp.write_text(text)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target

    def _build(self, key: str, suffix: str, build: Callable[[Path], None]) -> None:
        """Build into a temporary file, then rename its checksum and then the data into place."""
        target = self.path(key, suffix)
        tmp = self._temp(key, suffix)
        tmp_checksum = tmp.with_name(tmp.name + ".sha256")
        try:
            build(tmp)
            tmp_checksum.write_text(file_digest(tmp) + "\n")
            os.replace(tmp_checksum, self._checksum(target))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_checksum.unlink(missing_ok=True)

    def _temp(self, key: str, suffix: str) -> Path:
        # the naming is what _remove_stale_temps matches: keep them together
        fd, name = tempfile.mkstemp(prefix=f".{key}.", suffix=suffix, dir=self.directory)
        os.close(fd)
        return Path(name)

    def _remove_stale_temps(self, key: str, suffix: str, exclusive: bool) -> None:
        """Delete the temporary files of ``key`` that a killed build left (called under the lock:
        with ``exclusive`` no live process can own them; without it only day-old ones go)."""
        now = time.time()
        for pattern in (f".{key}.*{suffix}", f".{key}.*{suffix}.sha256"):
            for leftover in self.directory.glob(pattern):
                try:
                    if exclusive or now - leftover.stat().st_mtime > STALE_UNLOCKED_SECONDS:
                        leftover.unlink()
                except FileNotFoundError:
                    pass

    @staticmethod
    def _checksum(target: Path) -> Path:
        return target.with_name(target.name + ".sha256")

    def _record(self, event: str, target: Path) -> str:
        self.events.append((event, str(target)))
        return event
