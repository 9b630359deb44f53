"""The eager lowering: run a segment's fx GraphModule in PyTorch as it is.

It is the reference every other lowering is checked against.  With
``precision="bf16"`` it runs the segment's bfloat16 form instead
(``runtime/precision.py``): then it is a lowering of its own, and
``engine.lower`` wraps it in the first-call check like any other.
"""

from __future__ import annotations

from typing import List, Sequence

from speca_compile.passes.partition import Segment
from speca_compile.runtime.engine import Engine


class EagerEngine(Engine):
    name = "eager"

    def __init__(self, segment: Segment, precision: str = "fp32"):
        self.segment = segment
        self.module = segment.module
        self.precision = precision
        self._bf16 = None
        if precision == "bf16":
            from speca_compile.runtime.precision import Bf16Segment

            self._bf16 = Bf16Segment(segment)
            # builds: the bfloat16 graph is made on the first call (stats lists engines that ran)
            self.info = {"segment": segment.name, "precision": "bf16", "builds": 0}

    @property
    def reference(self) -> bool:
        """True for the plain eager segment (what the first-call check compares against)."""
        return self._bf16 is None

    def run(self, inputs: Sequence) -> List:
        if self._bf16 is not None:
            outputs = self._bf16.run(inputs)
            self.info["builds"] = self._bf16.builds
            return outputs
        return list(self.module(*inputs))
