"""A process that compiles a tiny model with lowering="onnxruntime" into a given engine cache.

Run by tests/test_engine_cache_processes.py, several at once or killed mid-build, to check
the cache across processes (runtime/engine_cache.py).  Prints JSON lines on stdout:

* ``{"ready": true}`` once imports and the model are done (the slow part of starting), so the
  parent can release several children at the same moment with ``--go FILE``;
* ``{"exporting": KEY_FILE}`` as each ONNX export starts (the temporary file exists then);
* a final ``{"exports": [...], "engines": [...], "rel_err": ..., "warnings": [...]}``: the
  files this process exported, the engines' ``stats`` info, the error against eager, and
  every warning raised.

``--hang`` sleeps after each export, before the file is renamed into place, so a parent can
kill the process mid-build without racing the export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import speca_compile  # noqa: E402
from speca_compile.runtime import onnxruntime_engine  # noqa: E402
from tests import helpers  # noqa: E402


def say(**message) -> None:
    print(json.dumps(message), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache_dir")
    parser.add_argument("--go", help="wait for this file to exist before compiling")
    parser.add_argument("--hang", action="store_true", help="sleep after each export, before its rename")
    args = parser.parse_args()
    torch.set_num_threads(1)   # several of these share two cores

    exports = []
    real_export = onnxruntime_engine.export_segment

    def counted_export(segment, io_spec, values, path, *rest, **kwargs):
        exports.append(str(path))
        say(exporting=str(path))
        real_export(segment, io_spec, values, path, *rest, **kwargs)
        if args.hang:
            time.sleep(600)

    onnxruntime_engine.export_segment = counted_export

    z = helpers.build("reference_dit")
    eager = helpers.trajectory(z, z.model, 1, 1)
    say(ready=True)
    if args.go:
        deadline = time.monotonic() + 300
        while not os.path.exists(args.go):
            if time.monotonic() > deadline:
                raise SystemExit("no go signal")
            time.sleep(0.005)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(z.model, backend="speca",
                                 options={"lowering": "onnxruntime", "cache_dir": args.cache_dir,
                                          "speculate": False})
        out = helpers.trajectory(z, compiled, 1, 1)
    engines = [e for e in speca_compile.stats(compiled)["per_graph"][-1]["engines"] if e.get("builds")]
    say(exports=exports, engines=engines, rel_err=helpers.rel_err(out, eager),
        warnings=[f"{w.category.__name__}: {w.message}" for w in caught])


if __name__ == "__main__":
    main()
