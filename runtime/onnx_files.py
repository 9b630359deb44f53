"""Writing ONNX files: where an exported graph and its weights go on disk.

Kept apart from the export itself (``onnx_export``): how a file is laid out
(one self-contained protobuf today) is a concern of the engine cache and the
bundles, not of tracing the segment.
"""

from __future__ import annotations

from pathlib import Path


def save_program(program, path: Path) -> None:
    """Write the ONNX program ``torch.onnx.export`` returned to ``path``, weights inside."""
    program.save(str(path), external_data=False)


def to_fp16(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` to compute in float16, its inputs and outputs kept float32.

    The precision lives in the graph, which is what TensorRT 11 requires (no FP16 builder
    flag) and what ONNX Runtime runs as written.  Inputs and outputs stay float32, so the
    runtime's cache, forecasts and verification keep their precision; the conversion is
    onnxruntime's own (``onnxruntime.transformers.float16``), with its list of ops kept in
    float32.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save(model, str(path))
