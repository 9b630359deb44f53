"""Read Dynamo's ``nn_module_stack`` metadata as plain dotted module paths.

Dynamo records, for every node, the chain of modules whose ``forward`` was
running, as strings such as ``L['self'].__dict__['_modules']['blocks'].0.attn``
(the exact spelling varies across torch releases).  We normalise them to
``blocks.0.attn`` and find the outermost entry of a ``ModuleList`` (a path
ending in an integer index), which is what a transformer block is.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from torch import fx

_DICT_MODULES = re.compile(r"\.__dict__\[['\"]_modules['\"]\]\[['\"]([^'\"]+)['\"]\]")
_MODULES_ITEM = re.compile(r"\._modules\[['\"]([^'\"]+)['\"]\]")
_BRACKET_STR = re.compile(r"\[['\"]([^'\"]+)['\"]\]")
_BRACKET_INT = re.compile(r"\[(\d+)\]")
_ROOT = re.compile(r"^(L\['self'\]|L\[\"self\"\]|self|L__self__)\.?")


def normalize_path(raw: str) -> str:
    """``L['self'].__dict__['_modules']['blocks'].0.attn`` -> ``blocks.0.attn``."""
    path = _ROOT.sub("", raw)
    path = _DICT_MODULES.sub(r".\1", "." + path)
    path = _MODULES_ITEM.sub(r".\1", path)
    path = _BRACKET_STR.sub(r".\1", path)
    path = _BRACKET_INT.sub(r".\1", path)
    return path.strip(".")


def module_chain(node: fx.Node) -> List[Tuple[str, str]]:
    """The (normalised path, class name) of each module active at ``node``, outer first."""
    stack = node.meta.get("nn_module_stack") or {}
    chain = []
    for value in stack.values():
        raw, cls = value if isinstance(value, tuple) else (str(value), "")
        cls_name = getattr(cls, "__qualname__", None) or str(cls)
        chain.append((normalize_path(str(raw)), cls_name))
    return chain


def block_of(node: fx.Node) -> Optional[Tuple[str, int, str]]:
    """``(stack_prefix, index, entry_class)`` of the outermost list entry at ``node``.

    A path such as ``transformer_blocks.0.norm1.emb`` (a block's submodule
    called from outside the block) is attributed to ``transformer_blocks.0``
    too; its class is then unknown (``""``).
    """
    chain = module_chain(node)
    classes = dict(chain)
    for path, _ in chain:
        parts = path.split(".")
        for i, part in enumerate(parts):
            if i > 0 and part.isdigit():
                prefix = ".".join(parts[:i])
                return prefix, int(part), classes.get(f"{prefix}.{part}", "")
    return None
