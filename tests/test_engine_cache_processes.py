"""The engine cache shared by processes (runtime/engine_cache.py), with real subprocesses.

Two processes compiling the same model into one cache_dir build each engine once (the
second waits on the entry's flock, then hits); a build killed with SIGKILL mid-export leaves
nothing the next run trips over.  The children (tests/engine_cache_child.py) compile the
reference DiT (no diffusers import: a child starts in a few seconds) with one thread each.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

from speca_compile.runtime import engine_reuse
from speca_compile.runtime.engine_cache import EngineCache, file_digest

fcntl = pytest.importorskip("fcntl", reason="the cross-process lock needs fcntl.flock (not on Windows)")
pytest.importorskip("onnxruntime")

CHILD = Path(__file__).with_name("engine_cache_child.py")
REPO = Path(__file__).resolve().parents[1]


class Child:
    """One engine_cache_child.py process; its JSON lines read as they come."""

    def __init__(self, cache_dir: Path, *args: str):
        self.stderr_path = cache_dir.parent / f"child-{id(self)}.stderr"
        self.stderr = open(self.stderr_path, "w")
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(cache_dir), *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        # read on a thread, so that waiting for a line can time out (readline alone blocks)
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, key: str, timeout: float = 300) -> dict:
        """The next line carrying ``key`` (the child prints one JSON object per line)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            message = json.loads(line)
            if key in message:
                return message
        raise AssertionError(f"child never said {key!r}; rc={self.proc.poll()}\n{self.errors()}")

    def finish(self, timeout: float = 300) -> dict:
        result = self.wait_for("exports", timeout)
        assert self.proc.wait(timeout) == 0, self.errors()
        return result

    def kill(self) -> None:
        self.proc.kill()   # SIGKILL: no finally blocks, no atexit
        self.proc.wait(30)

    def errors(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text()[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.reader.join(30)   # the pipe ends with the process
        self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture
def children():
    started = []
    yield lambda *args: started.append(Child(*args)) or started[-1]
    for child in started:
        child.close()


def leftovers(cache_dir: Path):
    """Temporary files: every hidden file of the cache (``.<key>.XXXX<suffix>[.sha256]``)."""
    return sorted(p.name for p in cache_dir.iterdir() if p.name.startswith("."))


def assert_entries_valid(cache_dir: Path, files) -> None:
    for name in files:
        target = cache_dir / name
        assert (cache_dir / f"{name}.sha256").read_text().strip() == file_digest(target)


def assert_clean_run(result: dict) -> None:
    assert result["rel_err"] < 1e-4
    assert not [w for w in result["warnings"] if "checksum" in w or "corrupt" in w], result["warnings"]


def held(lock_file: Path) -> bool:
    """Whether some process holds the flock on ``lock_file``."""
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_two_processes_at_once_build_each_engine_once(tmp_path, children):
    cache_dir, go = tmp_path / "engines", tmp_path / "go"
    pair = [children(cache_dir, "--go", str(go)) for _ in range(2)]
    for child in pair:
        child.wait_for("ready")
    go.touch()   # both start compiling now
    results = [child.finish() for child in pair]

    for result in results:
        assert_clean_run(result)
        assert all(e["builds"] == 1 for e in result["engines"])   # each process made its sessions
    files = {Path(e["file"]).name for r in results for e in r["engines"]}
    assert len(files) == 3   # prologue, block stack, epilogue
    # each file exported by exactly one of the two, which reported a miss; the other a hit
    exported = Counter(Path(p).name.split(".")[1] for r in results for p in r["exports"])
    assert exported == Counter(Path(f).stem for f in files)
    events = {f: sorted(e["cache"] for r in results for e in r["engines"] if Path(e["file"]).name == f)
              for f in files}
    assert all(e == ["hit", "miss"] for e in events.values()), events
    assert leftovers(cache_dir) == []
    assert_entries_valid(cache_dir, files)


def test_a_build_killed_mid_export_leaves_nothing_the_next_run_trips_over(tmp_path, children):
    cache_dir = tmp_path / "engines"
    doomed = children(cache_dir, "--hang")   # --hang: it never finishes an entry by itself
    temp = Path(doomed.wait_for("exporting")["exporting"])
    key = temp.name.split(".")[1]
    time.sleep(0.3)   # inside torch.onnx.export by now
    assert temp.exists() and held(cache_dir / f"{key}.onnx.lock")
    doomed.kill()
    assert temp.exists()                              # what the killed build left
    assert not (cache_dir / f"{key}.onnx").exists()   # never renamed into place
    assert not held(cache_dir / f"{key}.onnx.lock")   # the kernel released its lock

    result = children(cache_dir).finish()
    assert_clean_run(result)
    assert {e["cache"] for e in result["engines"]} == {"miss"}   # nothing half-built was loaded
    assert leftovers(cache_dir) == []
    assert_entries_valid(cache_dir, {Path(e["file"]).name for e in result["engines"]})


def test_a_mismatch_seen_while_another_holds_the_lock_is_checked_again_before_deleting(tmp_path):
    """A reader that finds a data file without its checksum (a writer of the old order, data
    before checksum, mid-write) waits for the writer's lock and then hits: no corruption."""
    cache = EngineCache(str(tmp_path))
    target = cache.path("k" * 32, ".bin")
    built = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cache.locked("k" * 32, ".bin"):
            target.write_bytes(b"engine")   # data there, its checksum not yet
            reader = threading.Thread(
                target=lambda: built.append(cache.fetch("k" * 32, ".bin", lambda p: p.write_bytes(b"rebuilt"))))
            reader.start()
            time.sleep(0.2)
            assert reader.is_alive()   # waiting on the lock, not deleting
            (tmp_path / f"{target.name}.sha256").write_text(file_digest(target) + "\n")
        reader.join(10)
    assert built == [(target, "hit")] and target.read_bytes() == b"engine"
    assert not [w for w in caught if "checksum" in str(w.message)]


def test_a_corrupt_entry_is_still_reported_deleted_and_rebuilt(tmp_path):
    cache = EngineCache(str(tmp_path))
    path, event = cache.fetch("c" * 32, ".bin", lambda p: p.write_bytes(b"one"))
    assert event == "miss"
    path.write_bytes(b"flipped")
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        assert cache.fetch("c" * 32, ".bin", lambda p: p.write_bytes(b"two"))[1] == "corrupt"
    assert path.read_bytes() == b"two" and cache.lookup("c" * 32, ".bin") == path
    assert [e for e, _ in cache.events] == ["miss", "corrupt"]
    assert leftovers(tmp_path) == []


def test_family_pointers_are_written_atomically(tmp_path):
    cache = EngineCache(str(tmp_path))
    cache.fetch("a" * 32, ".onnx", lambda p: p.write_bytes(b"onnx"))
    engine_reuse.remember(cache, "f" * 32, "b" * 32)
    engine_reuse.remember(cache, "f" * 32, "a" * 32)   # replaced whole
    assert cache.path("f" * 32, ".family").read_text() == "a" * 32 + "\n"
    assert engine_reuse.candidate(cache, "f" * 32, ".onnx") == "a" * 32
    assert leftovers(tmp_path) == []
