"""What the runtime reads from one call's flat inputs: timesteps, batch size, latent, shapes.

Each reader says why when it cannot answer (a timestep array whose length
matches no batch, a timestep that is not a number), so the runner can report
the call in ``stats`` instead of guessing.
"""

from __future__ import annotations

import contextvars
from typing import List, Optional, Tuple

import torch

from speca_compile.passes.partition import SpeculativeProgram
from speca_compile.passes.timestep_input import argument_name, resumes_after_break

# The timesteps the latest graph with a timestep input read, in this thread / asyncio task: a
# graph that resumes a forward after a graph break (Lumina2, OmniGen: the blocks come after a
# ``.tolist()``) has no timestep input and takes these, read by the forward's first graph.
_LAST_TIMESTEPS: contextvars.ContextVar = contextvars.ContextVar("speca_last_timesteps", default=None)

# diffusers and the original DiT code name the noisy latent so; first match wins
LATENT_NAMES = ("hidden_states", "sample", "latents", "latent", "x", "img", "z", "noisy_latents")


def latent_by_name(program: SpeculativeProgram, timestep_index: Optional[int]) -> Optional[int]:
    """The placeholder index of the noisy latent (what a sampler updates between calls) when a
    user input is named like one; ``None`` otherwise (e.g. positional ``*args``: ``args_0``)."""
    by_name = {argument_name(name): i for i, name in enumerate(program.placeholders)
               if name in program.user_inputs and i != timestep_index}
    return next((by_name[name] for name in LATENT_NAMES if name in by_name), None)


def latent_by_value(program: SpeculativeProgram, args, batch: int, timestep_index: Optional[int]) -> Optional[int]:
    """Else the first user input, in argument order, holding a floating-point tensor of at least
    two dimensions with one row per sample (diffusers and the DiT code pass the latent first)."""
    for i, (name, value) in enumerate(zip(program.placeholders, args)):
        if (name in program.user_inputs and i != timestep_index and isinstance(value, torch.Tensor)
                and value.is_floating_point() and value.dim() >= 2 and value.shape[0] == batch):
            return i
    return None


class CallInputs:
    """Reads a call's inputs for the runtime, by placeholder index."""

    def __init__(self, program: SpeculativeProgram, batch_inputs: Optional[Tuple[int, ...]],
                 timestep_index: Optional[int]):
        self.program = program
        self.batch_inputs = batch_inputs
        self.timestep_index = timestep_index
        self.latent_index = latent_by_name(program, timestep_index)
        self._latent_known = self.latent_index is not None   # else chosen by value at the first call
        # no timestep input, but blocks to speculate over after a graph break: inherit it
        self.inherits = (timestep_index is None and program.reason is None and program.num_units > 0
                         and resumes_after_break(program))
        # positions of the user's inputs among the placeholders (the module's weights are the
        # rest): read on every call, so found once rather than by name per placeholder per call
        users = set(program.user_inputs)
        self._user_positions = tuple(i for i, name in enumerate(program.placeholders) if name in users)

    def timesteps(self, args) -> Tuple[Optional[List[float]], Optional[str]]:
        """(one timestep per sample, None) or (None, why not); (None, None) when the
        graph has no timestep input at all (speculation is off with its own reason)."""
        if self.timestep_index is None:
            return self._inherited(args) if self.inherits else (None, None)
        times, problem = self._read(args)
        if times is not None:
            _LAST_TIMESTEPS.set(tuple(times))
        return times, problem

    def _inherited(self, args) -> Tuple[Optional[List[float]], Optional[str]]:
        last = _LAST_TIMESTEPS.get()
        batch = self.batch_size(args)
        if last is None:
            return None, ("this graph resumes a forward after a graph break and has no timestep "
                          "input, and no earlier graph in this thread read one")
        if batch is not None and len(last) != batch:
            return None, (f"this graph resumes a forward after a graph break; the timesteps the "
                          f"graph before it read have {len(last)} values for a batch of {batch}")
        return list(last), None

    def _read(self, args) -> Tuple[Optional[List[float]], Optional[str]]:
        value = args[self.timestep_index]
        batch = self.batch_size(args)
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and batch is not None and value.shape[0] == batch:
            # one timestep per frame or token (diffusion forcing: AnyFlow, Wan's per-token t):
            # a sample's trajectory is parameterised by its noisiest frame
            return [float(v) for v in value.detach().reshape(batch, -1).double().amax(1).cpu().tolist()], None
        if isinstance(value, torch.Tensor):
            flat = [float(v) for v in value.detach().reshape(-1).double().cpu().tolist()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat = [float(value)]
        else:
            return None, f"timestep input is a {type(value).__name__}, not a number or tensor"
        if len(flat) == 1 and batch is not None:
            return flat * batch, None
        if batch is None or len(flat) == batch:
            return flat, None
        return None, (f"timestep input has {len(flat)} values for a batch of {batch}: "
                      f"cannot tell which sample is at which timestep")

    def batch_size(self, args) -> Optional[int]:
        for i in self.batch_inputs or ():
            if isinstance(args[i], torch.Tensor):
                return int(args[i].shape[0])
        size = self.program.batch_size
        return int(size) if isinstance(size, int) else None

    def latent(self, args, batch: int) -> Optional[torch.Tensor]:
        """The call's noisy latent, one row per sample, or None if there is none to compare."""
        if not self._latent_known:
            self.latent_index = latent_by_value(self.program, args, batch, self.timestep_index)
            self._latent_known = True
        if self.latent_index is None:
            return None
        value = args[self.latent_index]
        if (isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 1
                and value.shape[0] == batch):
            return value
        return None

    def condition(self, args) -> Tuple:
        """The call's other tensor inputs (prompt embeddings, class labels, ids): a branch
        keeps them from step to step, and CFG's halves called separately differ in them."""
        skip = (self.timestep_index, self.latent_index)
        return tuple(args[i] for i in self._user_positions
                     if i not in skip and isinstance(args[i], torch.Tensor))

    def signature(self, args, rows: Optional[int] = None) -> Tuple:
        """The input shapes (and symbolic sizes) that must match for a call to continue a
        trajectory; the timestep's value is not part of it.  ``rows``: the signature of
        that many of the call's rows (a generation's share of a call naming its rows), the
        batched inputs' leading axis (and a symbolic batch size) set to it."""
        program = self.program
        batched = set(self.batch_inputs or ()) if rows is not None else set()

        def shape(i, a):
            if isinstance(a, torch.Tensor):
                return (rows,) + tuple(a.shape[1:]) if i in batched and a.dim() else tuple(a.shape)
            return rows if i in batched else a
        return tuple(shape(i, args[i]) for i in self._user_positions
                     if i != self.timestep_index and not isinstance(args[i], float))
