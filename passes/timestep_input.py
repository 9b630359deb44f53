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


def argument_name(placeholder: str) -> str:
    """``l_timestep_`` -> ``timestep``; ``l_kwargs_timestep_`` (a ``**kwargs`` wrapper) too."""
    name = re.sub(r"^[lL]_", "", placeholder).rstrip("_")
    return re.sub(r"^kwargs_", "", name)


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
    return None, (f"no timestep input found among graph inputs ({', '.join(sorted(user))}); "
                  f"name it with options={{'timestep_input': ...}}")
