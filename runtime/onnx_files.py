"""Writing ONNX files: where an exported graph and its weights go on disk.

Kept apart from the export itself (``onnx_export``): how a file is laid out is a
concern of the engine cache and the bundles, not of tracing the segment.

* **Small files are one file.**  A graph whose weights take at most
  ``external_data_bytes()`` is one self-contained protobuf, as always.
* **Large ones keep their weights beside them, by design.**  Above it (1.5 GiB by
  default, ``EXTERNAL_DATA_BYTES``; the environment variable
  ``SPECA_EXTERNAL_DATA_BYTES`` overrides it, e.g. ``0`` in tests to put every
  file's weights outside) the weights go to one external-data file beside the
  graph, named after the graph's *final* name: ``<key>.onnx`` reads
  ``<key>.onnx.data``, the relative location recorded in it.  (A protobuf stops
  at 2 GB; torch's exporter itself switches to external data above 1.5 GiB, so a
  larger override changes nothing there.)  Tensors of 256 bytes or less (shapes,
  scalars) stay inside the graph.
* **Written under temporary names, renamed together.**  The engine cache builds
  into a temporary ``.<key>.XXXXXXXX.onnx``; the weights go beside it as that
  name plus ``.data`` (``engine_cache.companion``) but are recorded under their
  final name ``<key>.onnx.data`` (``engine_cache.building_target``), and the
  cache renames, checksums and cleans up the two together.  So a temporary file
  does not load by itself (the data it names is not there yet); ``to_fp16``
  reads the weights from the companion.  Outside the cache (any other path) the
  companion and the final name coincide.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List, Optional

from speca_compile.runtime.engine_cache import building_target, companion

EXTERNAL_DATA_BYTES = 1536 << 20   # 1.5 GiB: below protobuf's 2 GB, where torch's exporter switches too
EXTERNAL_DATA_ENV = "SPECA_EXTERNAL_DATA_BYTES"
INLINE_TENSOR_BYTES = 256          # tensors this small stay inside the graph (onnx_ir's default)


def external_data_bytes() -> int:
    """Weights above this many bytes are written as external data: ``SPECA_EXTERNAL_DATA_BYTES``
    if set (read at each save), else ``EXTERNAL_DATA_BYTES``."""
    value = os.environ.get(EXTERNAL_DATA_ENV)
    if value is None or not value.strip():
        return EXTERNAL_DATA_BYTES
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"{EXTERNAL_DATA_ENV}={value!r}: expected a number of bytes >= 0")
    return number


def data_path(path: Path) -> Path:
    """Where the external data of the ONNX file at ``path`` is written (its companion)."""
    return companion(Path(path))


def data_location(path: Path) -> str:
    """The name the ONNX file at ``path`` records for its external data: its final name plus
    ``.data`` (relative, so the file and its data move together)."""
    return companion(building_target(Path(path))).name


def save_program(program, path: Path) -> None:
    """Write the ONNX program ``torch.onnx.export`` returned to ``path``: one file, or with its
    weights in ``data_path(path)`` when they exceed ``external_data_bytes()``."""
    path = Path(path)
    data = data_path(path)
    data.unlink(missing_ok=True)   # only what this save writes belongs to the file
    external = _initializer_bytes(program.model) > external_data_bytes()
    program.save(str(path), external_data=external)
    if data.exists():   # asked for, or the exporter's own switch (above 1.5 GiB)
        _relocate(path, data_location(path))


def to_fp16(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` to compute in float16, its inputs and outputs kept float32.

    The precision lives in the graph, which is what TensorRT 11 requires (no FP16 builder
    flag) and what ONNX Runtime runs as written.  Inputs and outputs stay float32, so the
    runtime's cache, forecasts and verification keep their precision; the conversion is
    onnxruntime's own (``onnxruntime.transformers.float16``), with its list of ops kept in
    float32.

    A file with external data is read from its companion (``data_path``) and written back by
    the same rule as ``save_program`` (the halved weights may now fit in one file).  Shape
    inference then runs on the graph without its weights (a graph with them may be over
    protobuf's 2 GB, where onnx's ``infer_shapes`` fails); the small tensors it may read
    (shapes) are inside the graph.  The rewrite is in place, not atomic: the cache calls it
    on its temporary file.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    external = _external_tensors(model)
    if not external:
        model = convert_float_to_float16(model, keep_io_types=True)
    else:
        model = onnx.shape_inference.infer_shapes(model)
        for tensor in _external_tensors(model):
            _set_location(tensor, data_path(path).name)
        load_external_data_for_model(model, str(path.parent))
        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    _save_model(model, path)


def copy_onnx(source: Path, dest: Path, link: bool = False) -> Optional[Path]:
    """Copy the ONNX file ``source`` to ``dest`` with its external data, if it has any, as
    ``data_path(dest)`` (recorded so in the copy); returns that data file, or None.

    ``link``: hard-link the data (and a one-file graph) instead of copying where the
    filesystem allows, for a source nobody will change (the export's private cache)."""
    import onnx

    source, dest = Path(source), Path(dest)
    data = data_path(source)
    if data.exists():
        model = onnx.load(str(source), load_external_data=False)
        locations = {_location(t) for t in _external_tensors(model)}
        if locations:
            if locations != {data.name}:
                raise ValueError(f"{source}: its external data is in {sorted(locations)}, expected "
                                 f"{data.name} beside it")
            for tensor in _external_tensors(model):
                _set_location(tensor, data_path(dest).name)
            _place(data, data_path(dest), link)
            onnx.save(model, str(dest))
            return data_path(dest)
    _place(source, dest, link)
    return None


def _place(source: Path, dest: Path, link: bool) -> None:
    if link:
        try:
            os.link(source, dest)
            return
        except OSError:   # another filesystem, or links not allowed: copy
            pass
    shutil.copyfile(source, dest)


def _initializer_bytes(model) -> int:
    """Bytes of an onnx_ir model's initializers (what torch's exporter counts for its own switch)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _tensor_bytes(model) -> int:
    """Bytes of raw tensor data held in an ONNX ``ModelProto``."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(len(t.raw_data) for t in _get_all_tensors(model) if t.HasField("raw_data"))


def _save_model(model, path: Path) -> None:
    """Write a ``ModelProto`` whose data is all in memory to ``path``, by the rule of ``save_program``."""
    import onnx

    data = data_path(path)
    data.unlink(missing_ok=True)   # onnx.save appends to an existing data file
    if _tensor_bytes(model) > external_data_bytes():
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=INLINE_TENSOR_BYTES + 1)
        _relocate(path, data_location(path))
    else:
        onnx.save(model, str(path))


def _relocate(path: Path, location: str) -> None:
    """Record ``location`` as the external data file of every external tensor of ``path``
    (the graph is rewritten, its data file left alone)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for tensor in _external_tensors(model):
        _set_location(tensor, location)
    onnx.save(model, str(path))


def _external_tensors(model) -> List:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def _location(tensor) -> str:
    return next((e.value for e in tensor.external_data if e.key == "location"), "")


def _set_location(tensor, location: str) -> None:
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
