"""The eager lowering: run a segment's fx GraphModule in PyTorch as it is.

It is the reference every other lowering is checked against.
"""

from __future__ import annotations

from typing import List, Sequence

from speca_compile.passes.partition import Segment
from speca_compile.runtime.engine import Engine


class EagerEngine(Engine):
    name = "eager"

    def __init__(self, segment: Segment):
        self.segment = segment
        self.module = segment.module

    def run(self, inputs: Sequence) -> List:
        return list(self.module(*inputs))
