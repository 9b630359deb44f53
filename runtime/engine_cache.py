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
* **Checksum first, the file last.**  The file and its checksum are written
  to temporary names and renamed into place (``os.replace``, atomic), the
  checksum before the file, so a reader that sees a file always finds the
  checksum written for it.  Reads take no lock; a reader that finds a mismatch
  checks again under the lock (the file may have been replaced meanwhile)
  before it declares the entry corrupt and deletes it.
* **A file and its weights, together.**  A build may write, beside its
  temporary file ``T``, a companion ``T.data`` (an ONNX file's external data,
  see ``onnx_files``: it records the companion under its final name
  ``<key><suffix>.data``, which ``building_target`` tells it).  The entry is
  then both files, and its checksum file lists the sha256 of each (lines
  ``<sha256>  <name>``; a one-file entry keeps the bare digest of earlier
  versions, so their caches stay valid).  The renames go companion, checksum,
  file: the file is the commit point, so a crash between them leaves no file,
  which reads as a miss and is rebuilt, never a file whose companion is
  missing or stale.  A corrupt entry is deleted in the opposite order (file
  first).  A one-file build removes a companion an older build left.  A failed
  build removes what it renamed before the failure.
* **No leftovers.**  Temporary files are named ``.<key>.XXXXXXXX<suffix>`` (and
  that name plus ``.sha256`` and ``.data``; onnx_ir writes the companion through
  a directory ``..<key>.XXXXXXXX<suffix>.data.YYYY``); under an entry's lock
  nobody else can be writing them, so any found there belong to a build that
  was killed (SIGKILL, power loss) and are removed.

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
import shutil
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
    """sha256 of the tensors' dtypes, shapes and bytes.  Hashed in place (no ``tobytes`` copy, which
    doubled the memory of a weight while it was hashed); a tensor off the CPU is copied there one
    at a time."""
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(flat.view(torch.uint8).numpy().data)
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


def companion(path: Path) -> Path:
    """The file a build may write beside ``path`` that belongs to the same entry (an ONNX file's
    external data): ``path`` plus ``.data``, for a temporary file as for a cached one."""
    path = Path(path)
    return path.with_name(path.name + ".data")


# temporary file being built (absolute path) -> the path it will have in the cache
_building: Dict[str, Path] = {}
_building_guard = threading.Lock()


def building_target(path: Path) -> Path:
    """The path the file being built at ``path`` will have once renamed into the cache; ``path``
    itself for a file the cache is not building.  A build that writes a companion records it
    under its final name, ``companion(building_target(path)).name``."""
    with _building_guard:
        return _building.get(os.path.abspath(path), Path(path))


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
    """Whether ``target`` (and its companion, when the checksum lists one) is there with the
    checksum written for it.

    Races with a writer read as a mismatch (never as a match), e.g. a file deleted between
    the two reads; callers re-check under the entry lock before acting on a mismatch."""
    try:
        listed = _read_checksum(target, checksum)
        return listed is not None and all(file_digest(target.with_name(name)) == digest
                                          for name, digest in listed.items())
    except FileNotFoundError:
        return False


def _read_checksum(target: Path, checksum: Path) -> Optional[Dict[str, str]]:
    """File name -> sha256 of the entry ``target``, from its checksum file; None if malformed.

    A bare digest (one-file entries) is ``target``'s; else lines ``<sha256>  <name>``, which
    must name ``target`` and may name its companion, nothing else."""
    text = checksum.read_text().split()
    if len(text) == 1:
        return {target.name: text[0]}
    if len(text) % 2 or not text:
        return None
    listed = dict(zip(text[1::2], text[0::2]))
    if target.name not in listed or not set(listed) <= {target.name, companion(target).name}:
        return None
    return listed


def _checksum_text(files: List[Tuple[Path, str]]) -> str:
    """The checksum file of an entry: ``files`` are (file now, its name in the cache), the entry's
    file first.  One file: its bare digest (the format of one-file entries since the start)."""
    if len(files) == 1:
        return file_digest(files[0][0]) + "\n"
    return "".join(f"{file_digest(now)}  {name}\n" for now, name in files)


class EngineCache:
    """One directory of ``<key><suffix>`` files, each beside a ``.sha256`` and a ``.lock`` (and,
    for files with external weights, a ``<key><suffix>.data``)."""

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
                target.unlink(missing_ok=True)   # the file first: what is left reads as a miss
                checksum.unlink(missing_ok=True)
                companion(target).unlink(missing_ok=True)
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
        """Build into a temporary file (and maybe its companion), then rename the companion, the
        checksum and last the file into place (called under the lock, the entry's file absent)."""
        target = self.path(key, suffix)
        checksum = self._checksum(target)
        tmp = self._temp(key, suffix)
        tmp_data = companion(tmp)
        tmp_checksum = tmp.with_name(tmp.name + ".sha256")
        renamed: List[Path] = []   # the entry's files already in place, removed if the build fails
        committed = False
        with _building_guard:
            _building[os.path.abspath(tmp)] = target
        try:
            build(tmp)
            with_data = tmp_data.exists()
            files = [(tmp, target.name)] + ([(tmp_data, companion(target).name)] if with_data else [])
            tmp_checksum.write_text(_checksum_text(files))
            if with_data:
                renamed.append(companion(target))
                os.replace(tmp_data, companion(target))
            else:   # an older build's weights, which this file does not read
                companion(target).unlink(missing_ok=True)
            renamed.append(checksum)
            os.replace(tmp_checksum, checksum)
            os.replace(tmp, target)
            committed = True
        finally:
            with _building_guard:
                _building.pop(os.path.abspath(tmp), None)
            for leftover in (tmp, tmp_data, tmp_checksum) + (() if committed else tuple(renamed)):
                leftover.unlink(missing_ok=True)

    def _temp(self, key: str, suffix: str) -> Path:
        # the naming is what _remove_stale_temps matches: keep them together
        fd, name = tempfile.mkstemp(prefix=f".{key}.", suffix=suffix, dir=self.directory)
        os.close(fd)
        return Path(name)

    def _remove_stale_temps(self, key: str, suffix: str, exclusive: bool) -> None:
        """Delete the temporary files of ``key`` that a killed build left (called under the lock:
        with ``exclusive`` no live process can own them; without it only day-old ones go): the
        file, its ``.sha256`` and ``.data``, and onnx_ir's directory for writing the ``.data``."""
        now = time.time()
        for pattern in (f".{key}.*{suffix}", f".{key}.*{suffix}.sha256", f".{key}.*{suffix}.data",
                        f"..{key}.*{suffix}.data.*"):
            for leftover in self.directory.glob(pattern):
                try:
                    if exclusive or now - leftover.stat().st_mtime > STALE_UNLOCKED_SECONDS:
                        if leftover.is_dir() and not leftover.is_symlink():
                            shutil.rmtree(leftover, ignore_errors=True)
                        else:
                            leftover.unlink()
                except FileNotFoundError:
                    pass

    @staticmethod
    def _checksum(target: Path) -> Path:
        return target.with_name(target.name + ".sha256")

    def _record(self, event: str, target: Path) -> str:
        self.events.append((event, str(target)))
        return event
