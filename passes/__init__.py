"""Graph passes: pure functions from a Dynamo ``fx.GraphModule`` to a plan.

``find_blocks`` finds the repeated transformer-block stacks and assigns every
node to the prologue, one block, or the epilogue; ``partition`` cuts the graph
there into segment GraphModules with named boundary (cut) values;
``find_batch_inputs`` tells which graph inputs carry the batch dimension, so
the runtime can run a sub-batch; ``fuse_stack`` joins the blocks into one
segment for the full path; ``find_side_values`` tells which of the values
the prologue hands the blocks hold one row per sample.  None of them keeps state.
"""

from speca_compile.passes.find_blocks import BlockPlan, find_blocks
from speca_compile.passes.partition import Segment, SpeculativeProgram, partition
from speca_compile.passes.batch_inputs import find_batch_inputs
from speca_compile.passes.fuse_stack import fuse_stack
from speca_compile.passes.side_values import find_side_values

__all__ = [
    "BlockPlan",
    "find_blocks",
    "Segment",
    "SpeculativeProgram",
    "partition",
    "find_batch_inputs",
    "fuse_stack",
    "find_side_values",
]
