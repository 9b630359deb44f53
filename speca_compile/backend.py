"""The ``speca`` torch.compile backend: the pipeline, read top to bottom.

Registered through the ``torch_dynamo_backends`` entry point only (a second
``@register_backend`` on the same name asserts "duplicate name").  A failure
raises with the reason; it never silently returns the uncompiled graph.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any, Optional, Sequence

from torch import fx

from speca_compile import registry
from speca_compile.errors import OptionsError
from speca_compile.options import Options
from speca_compile.passes import find_batch_inputs, find_blocks, find_side_values, fuse_stack, partition
from speca_compile.passes.token_subset import with_token_subset
from speca_compile.passes.graph_inputs import describe_graph_inputs
from speca_compile.passes.timestep_input import find_timestep_input, resumes_after_break
from speca_compile.runtime.engine import lower, resolve_lowering
from speca_compile.runtime.feature_cache import cache_cuts, feature_groups
from speca_compile.runtime.fused_step import resolve_fuse_steps
from speca_compile.runtime.runner import Runner


def speca_backend(gm: fx.GraphModule, example_inputs: Sequence[Any],
                  options: Optional[dict] = None, mode: Optional[str] = None) -> Runner:
    """Compile one Dynamo graph into a speculative Runner."""
    if mode is not None:
        raise OptionsError(f"the speca backend takes options={{...}}, not mode={mode!r}")
    settings, lowering_note = resolve_lowering(Options.parse(options), example_inputs)
    plan = find_blocks(gm)
    program = dataclasses.replace(partition(gm, plan), resumed=_compiling_resume_function())
    _check_verify_block(settings, program.num_units)
    timestep_index, timestep_problem = find_timestep_input(program, settings)
    settings, fuse_note = resolve_fuse_steps(settings, example_inputs)
    notes = [n for n in (lowering_note, fuse_note) if n]
    if timestep_problem and program.reason is None and resumes_after_break(program):
        timestep_problem = None   # runtime.call_inputs takes the preceding graph's timesteps
        notes.append("no timestep input: this graph resumes the forward after a graph break, so "
                     "each call takes the timesteps the graph before it read")
    reason = _why_not_speculate(settings, program.reason, timestep_problem)
    batch_inputs = None
    if program.reason is None:
        batch_inputs, note = find_batch_inputs(gm, example_inputs, program)
        notes.append(note)
    program = fuse_stack(program, _cache_cuts(settings, program, reason))
    if reason is None:
        program, note = with_token_subset(program, _verify_unit(settings, program), settings.verify_stride)
        notes.extend([note] if note else [])
    if reason is None:
        side_values, note = find_side_values(gm, example_inputs, program, batch_inputs)
        program = dataclasses.replace(program, side_values=side_values)
        notes.append(note)
    engines = lower(program, settings)
    runner = Runner(program, engines, settings, batch_inputs, timestep_index, reason, notes)
    runner.graph_inputs = describe_graph_inputs(gm, example_inputs)   # for speca_compile.export
    module_state = [v for name, v in zip(program.placeholders, example_inputs)
                    if name not in program.user_inputs]
    registry.register(runner, module_state, options)
    return runner


def _compiling_resume_function() -> bool:
    """True when Dynamo is compiling a *resume function* (``torch_dynamo_resume_in_forward_at_N``:
    the rest of a forward after a graph break).  Dynamo does not hand the backend the code it
    compiles, so this reads its compile frames' ``code``; False where that cannot be seen."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_locals.get("code") if frame.f_code.co_name in ("_compile", "compile_inner",
                                                                        "_compile_inner", "compile_frame") else None
        if isinstance(code, types.CodeType):
            return code.co_name.startswith("torch_dynamo_resume_in_")
        frame = frame.f_back
    return False


def _cache_cuts(settings: Options, program, reason: Optional[str]):
    """The cuts a full step hands the feature cache (none when the runner cannot speculate)."""
    if reason is not None or not program.num_units:
        return ()
    return cache_cuts(feature_groups(settings.verify_block % program.num_units, program.num_units))


def _verify_unit(settings: Options, program) -> Optional[int]:
    return settings.verify_block % program.num_units if program.num_units else None


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
