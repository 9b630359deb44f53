"""The ``speca`` torch.compile backend: the pipeline, read top to bottom.

Registered through the ``torch_dynamo_backends`` entry point only (a second
``@register_backend`` on the same name asserts "duplicate name").  A failure
raises with the reason; it never silently returns the uncompiled graph.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import fx

from speca_compile import registry
from speca_compile.errors import OptionsError
from speca_compile.options import Options
from speca_compile.passes import find_batch_inputs, find_blocks, fuse_stack, partition
from speca_compile.passes.graph_inputs import describe_graph_inputs
from speca_compile.passes.timestep_input import find_timestep_input
from speca_compile.runtime.engine import lower, resolve_lowering
from speca_compile.runtime.feature_cache import cache_cuts, feature_groups
from speca_compile.runtime.runner import Runner


def speca_backend(gm: fx.GraphModule, example_inputs: Sequence[Any],
                  options: Optional[dict] = None, mode: Optional[str] = None) -> Runner:
    """Compile one Dynamo graph into a speculative Runner."""
    if mode is not None:
        raise OptionsError(f"the speca backend takes options={{...}}, not mode={mode!r}")
    settings, lowering_note = resolve_lowering(Options.parse(options), example_inputs)
    plan = find_blocks(gm)
    program = partition(gm, plan)
    _check_verify_block(settings, program.num_units)
    timestep_index, timestep_problem = find_timestep_input(program, settings)
    reason = _why_not_speculate(settings, program.reason, timestep_problem)
    notes = [lowering_note] if lowering_note else []
    batch_inputs = None
    if program.reason is None:
        batch_inputs, note = find_batch_inputs(gm, example_inputs, program)
        notes.append(note)
    program = fuse_stack(program, _cache_cuts(settings, program, reason))
    engines = lower(program, settings)
    runner = Runner(program, engines, settings, batch_inputs, timestep_index, reason, notes)
    runner.graph_inputs = describe_graph_inputs(gm, example_inputs)   # for speca_compile.export
    module_state = [v for name, v in zip(program.placeholders, example_inputs)
                    if name not in program.user_inputs]
    registry.register(runner, module_state, options)
    return runner


def _cache_cuts(settings: Options, program, reason: Optional[str]):
    """The cuts a full step hands the feature cache (none when the runner cannot speculate)."""
    if reason is not None or not program.num_units:
        return ()
    return cache_cuts(feature_groups(settings.verify_block % program.num_units, program.num_units))


def _check_verify_block(settings: Options, num_units: int) -> None:
    if num_units and not -num_units <= settings.verify_block < num_units:
        raise OptionsError(
            f"option 'verify_block' got {settings.verify_block}; the model has {num_units} "
            f"blocks, valid range [{-num_units}, {num_units - 1}]"
        )


def _why_not_speculate(settings: Options, program_problem: Optional[str],
                       timestep_problem: Optional[str]) -> Optional[str]:
    if not settings.speculate:
        return "speculation disabled by options (speculate=False)"
    return program_problem or timestep_problem
