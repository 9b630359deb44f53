"""Checking an engine against the eager segment, and remembering the verdict.

No engine runs unchecked: a lowering is trusted only after its first real call
agreed with the eager segment on the same inputs.  Exporters and compilers
mis-translate some graphs without an error (diffusers classes outside the tested
families gave 6-43 % relative error and NaN through ONNX), so a successful build
proves nothing about the numbers.

This module holds the one comparison every check uses (the first-call check of
``engine.CheckedEngine`` and the reuse check of ``engine_reuse``): per output,
the relative L2 error against eager, within a bound set by the precision the
engine computes in.  It also stores verdicts beside cached ONNX files
(``<key>.checked``, written with ``EngineCache.write_text``: atomic, locked), so
a later process that loads a checked file does not run the eager segment again,
and one that loads a file known to be wrong falls back at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from speca_compile.errors import LoweringError

# float32 engines: the reuse tolerance the project has always used (ONNX export measured 8e-7)
FP32_BOUND = 1e-4
# float16 graphs: half precision's own error.  Measured on the tiny test models: 4e-3 (DiT's
# epilogue) and 9.4e-3 (Flux's prologue: the timestep embedding's sinusoids of t ~ 1000 in
# float16) on a first call, so 1e-2 would fail correct engines; wrong translations measured
# 6.5e-2 and up
FP16_BOUND = 3e-2
# bfloat16 (precision="bf16" on eager/Inductor, runtime/precision.py; and models already in bfloat16):
# 8 significant bits.  Measured against the float32 eager segments on a first call: 2.6e-3 to
# 5.2e-3 on the tiny test models (dit, pixart, sd3, flux, reference_dit; eager and Inductor, the
# block stack the worst), 7.6e-3 on the trained dit_digits / flux_digits block stacks, and growing
# with depth as rounding accumulates (random-weight reference DiT stacks: 4.2e-3 at 3 blocks,
# 8.1e-3 at 12, 1.2e-2 at 28): 5e-2 leaves a 4x margin at DiT-XL's depth, below the 6.5e-2 and up
# that wrong translations measured.  Rounding the timestep to bfloat16 as well gave up to 1.7e-1
# (PixArt's prologue), which is why precision.py keeps per-sample vectors in their dtype
BF16_BOUND = 5e-2
_PRECISION_BOUNDS = {"fp32": FP32_BOUND, "fp16": FP16_BOUND, "bf16": BF16_BOUND}
_DTYPE_BOUNDS = {torch.float16: FP16_BOUND, torch.bfloat16: BF16_BOUND}
# outputs whose RMS is below this are compared absolutely (error / this RMS): a relative error of
# an all-but-zero output measures rounding noise, not a wrong translation
SCALE_FLOOR_RMS = 1e-3


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether an engine's outputs agreed with eager; true when it passed.

    ``error`` is the largest relative L2 error over the outputs (``inf`` for a shape mismatch,
    a non-finite output or an exception); ``source`` says where the verdict came from:
    ``"eager"`` (compared now), ``"cache"`` (a ``.checked`` file), ``"reuse"`` (the reuse check)."""

    passed: bool
    error: float
    bound: float
    reason: str = ""
    source: str = "eager"

    def __bool__(self) -> bool:
        return self.passed

    def message(self, segment: str, engine: str) -> str:
        """What a warning or ``LoweringError`` says: the segment, what differed, error and bound."""
        return (f"segment {segment!r}: {engine} disagrees with the eager segment: {self.reason} "
                f"(relative L2 error {self.error:.2e}, bound {self.bound:.0e})")

    def to_text(self) -> str:
        return json.dumps({"passed": self.passed, "error": _json_float(self.error), "bound": self.bound,
                           "reason": self.reason}) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Optional["Verdict"]:
        """The verdict a ``.checked`` file holds, or None if it is not one (then it is checked again)."""
        try:
            data = json.loads(text)
            return cls(bool(data["passed"]), float(data["error"]), float(data["bound"]),
                       str(data.get("reason", "")), "cache")
        except (ValueError, KeyError, TypeError):
            return None


class CheckFailed(LoweringError):
    """An engine's outputs disagreed with eager (now, or as remembered beside its file).

    ``expected`` holds the eager outputs when they were computed for the check, so the
    call that failed returns them without running the segment a second time."""

    def __init__(self, message: str, verdict: Verdict, expected: Optional[Sequence] = None):
        super().__init__(message)
        self.verdict = verdict
        self.expected = expected


def bound_for(precision: str, inputs: Sequence) -> float:
    """The error an engine may have: set by the precision of its graph (the ``precision``
    option) and of the tensors it computes on (a model run in half precision is compared
    at half precision's bound, whatever the option says)."""
    bounds = [_PRECISION_BOUNDS.get(precision, FP16_BOUND)]
    bounds += [_DTYPE_BOUNDS.get(v.dtype, FP32_BOUND) for v in inputs
               if isinstance(v, torch.Tensor) and v.is_floating_point()]
    return max(bounds)


def compare(expected: Sequence, got: Sequence, bound: float) -> Verdict:
    """``got`` (an engine's outputs) against ``expected`` (the eager segment's), output by output."""
    if len(got) != len(expected):
        return Verdict(False, math.inf, bound, f"{len(got)} outputs, eager has {len(expected)}")
    worst, failure = 0.0, None
    for i, (want, have) in enumerate(zip(expected, got)):
        error, problem = _output_error(want, have)
        if problem is not None:
            return Verdict(False, math.inf, bound, f"output {i} {problem}")
        worst = max(worst, error)
        if error > bound and failure is None:
            failure = f"output {i} differs"
    return Verdict(failure is None, worst, bound, failure or "")


def _output_error(want, have):
    """(relative L2 error, None) or (inf, what is wrong) for one output."""
    if not isinstance(want, torch.Tensor):
        if isinstance(have, torch.Tensor):
            return math.inf, f"is a tensor where eager returns {type(want).__name__}"
        if isinstance(want, float) and isinstance(have, (int, float)):
            if math.isfinite(want) and not math.isfinite(have):
                return math.inf, f"is {have!r} where eager is finite"
            return abs(have - want) / max(abs(want), SCALE_FLOOR_RMS), None
        return (0.0, None) if have == want else (math.inf, f"is {have!r}, eager {want!r}")
    if not isinstance(have, torch.Tensor):
        return math.inf, f"is a {type(have).__name__}, eager a tensor"
    if tuple(have.shape) != tuple(want.shape):
        return math.inf, f"has shape {tuple(have.shape)}, eager {tuple(want.shape)}"
    with torch.no_grad():
        w, h = _real(want), _real(have.to(want.device))
        finite = torch.isfinite(w)
        broken = int((finite & ~torch.isfinite(h)).sum())
        if broken:
            return math.inf, f"has {broken} non-finite values where eager is finite"
        if not bool(finite.all()):   # compare where eager itself is finite
            w, h = w[finite], h[finite]
        floor = SCALE_FLOOR_RMS * math.sqrt(max(w.numel(), 1))
        return float((h - w).norm()) / max(float(w.norm()), floor), None


def _real(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return torch.view_as_real(t).double() if t.is_complex() else t.double()


def _json_float(x: float):
    return x if math.isfinite(x) else str(x)   # json has no inf/nan; float("inf") reads it back


# ------------------------------------------------------------------ verdicts beside cached files
def verdict_key(cache, file_key: str, path: Path, signature: str, bound: float) -> str:
    """The key of the ``.checked`` file for the cached file ``file_key`` run with ``signature``
    (the segment's input specs and baked values) at ``bound``.  The file's checksum is part
    of it: a file rebuilt, or replaced by one with other contents, has no verdict yet."""
    from speca_compile.runtime.engine_cache import cache_key

    return cache_key("checked", file_key, _file_checksum(cache, path), signature, repr(bound))


def read_verdict(cache, key: str) -> Optional[Verdict]:
    try:
        return Verdict.from_text(cache.path(key, ".checked").read_text())
    except FileNotFoundError:
        return None


def write_verdict(cache, key: str, verdict: Verdict) -> Path:
    return cache.write_text(key, ".checked", verdict.to_text())


def _file_checksum(cache, path: Path) -> str:
    # the sha256 the cache wrote beside the file (and verified when it handed the file out)
    try:
        return cache._checksum(Path(path)).read_text().strip()
    except FileNotFoundError:
        return "unknown"
