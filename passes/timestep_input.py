"""Find which graph input is the diffusion timestep.

The runtime needs the timestep *value* of every call: it drives the
forecast (divided differences over timestep values), the threshold schedule
and trajectory detection.  Dynamo names placeholders after the forward's
arguments (``l_timestep_``), so common names are recognised; any other name
is given with the ``timestep_input`` option.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

from speca_compile.errors import OptionsError
from speca_compile.options import Options
from speca_compile.passes.partition import SpeculativeProgram

KNOWN_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas", "time", "noise_level")
_SUFFIX = re.compile(r"(^|_)(timesteps?|sigmas?)$")


def argument_name(placeholder: str) -> str:
    """``l_timestep_`` -> ``timestep``; ``l_kwargs_timestep_`` (a ``**kwargs`` wrapper) too."""
    name = re.sub(r"^[lL]_", "", placeholder).rstrip("_")
    return re.sub(r"^kwargs_", "", name)


_RESUMED = re.compile(r"^stack\d+_\d+$")


def resumes_after_break(program: SpeculativeProgram) -> bool:
    """True for the graph of a Dynamo *resume function*: the rest of a forward after a graph
    break, whose inputs include the values on the interpreter stack at the break
    (``l_stack0_0_``...).  Lumina2 and OmniGen break before their blocks (a ``.tolist()``, a
    data-dependent ``if``), so the graph holding the blocks gets the timestep embedding, not the
    timestep: the runtime then takes the timestep the preceding graph of the same forward read.
    ``program.resumed`` is set by the backend, which sees the code Dynamo compiles; the stack
    inputs are the fallback."""
    return program.resumed or any(_RESUMED.match(argument_name(name)) for name in program.user_inputs)


def find_timestep_input(program: SpeculativeProgram, options: Options) -> Tuple[Optional[int], Optional[str]]:
    """(placeholder index, None) or (None, why not found)."""
    user = {argument_name(name): i for i, name in enumerate(program.placeholders)
            if name in program.user_inputs}
    if options.timestep_input is not None:
        if options.timestep_input not in user:
            raise OptionsError(
                f"option 'timestep_input' got {options.timestep_input!r}, which is not an input "
                f"of the compiled graph; graph inputs: {', '.join(sorted(user))}"
            )
        return user[options.timestep_input], None
    for name in KNOWN_NAMES:
        if name in user:
            return user[name], None
    # a qualified name: ``vision_timesteps`` (Cosmos3), ``noise_timestep``; the first in graph order
    qualified = sorted((i, name) for name, i in user.items() if _SUFFIX.search(name))
    if qualified:
        return qualified[0][0], None
    return None, (f"no timestep input found among graph inputs ({', '.join(sorted(user))}); "
                  f"name it with options={{'timestep_input': ...}}")
