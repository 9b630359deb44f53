"""Where the committed reference weights live, and loading them.

Each model has a folder ``examples/<name>/`` with ``weights.safetensors`` and
``config.json`` (architecture, training command and the figures measured
after training).  ``SPECA_REFERENCE_DIR`` points elsewhere, for installs
that are not a clone of the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict

import torch

from speca_compile.errors import SpecaError

NAMES = ("dit_digits", "flux_digits")
JUDGE = "digits_judge"


def folder(name: str) -> Path:
    root = os.environ.get("SPECA_REFERENCE_DIR")
    base = Path(root) if root else Path(__file__).resolve().parents[2] / "examples"
    return base / name


def save(name: str, tensors: Dict[str, torch.Tensor], config: dict) -> Path:
    from safetensors.torch import save_file

    path = folder(name)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path / "weights.safetensors"))
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_tensors(name: str):
    path = folder(name)
    weights = path / "weights.safetensors"
    if not weights.exists():
        raise SpecaError(f"reference weights for {name!r} not found at {weights}: run "
                         f"`python -m speca_compile.reference.train {name}` from the repository, "
                         f"or set SPECA_REFERENCE_DIR to the folder holding {name}/")
    from safetensors.torch import load_file

    return load_file(str(weights)), json.loads((path / "config.json").read_text())


def _prefixed(tensors, prefix):
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_judge():
    from speca_compile.reference.judge import DigitsJudge

    tensors, _ = load_tensors(JUDGE)
    judge = DigitsJudge()
    judge.load_state_dict(tensors)
    return judge.eval()


def load(name: str):
    """The trained ``ReferenceModel`` for ``name`` in NAMES."""
    from speca_compile.reference import models

    if name not in NAMES:
        raise SpecaError(f"unknown reference model {name!r}; valid: {', '.join(NAMES)}")
    tensors, config = load_tensors(name)
    guidance = float(config["guidance"])
    if name == "dit_digits":
        model = models.build_dit()
        model.load_state_dict(_prefixed(tensors, "transformer."))
        return models.dit_reference(model, guidance)
    model, encoder = models.build_flux(), models.LabelEncoder()
    model.load_state_dict(_prefixed(tensors, "transformer."))
    encoder.load_state_dict(_prefixed(tensors, "label_encoder."))
    return models.flux_reference(model, encoder, guidance)
