"""The backend is found through the installed entry point, with no import of ours.

The segments run eagerly: the entry point is the subject, not a lowering (an ONNX export
would double the child process's time; the default lowering runs end to end in
tests/test_models_end_to_end.py)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from tests.reference_dit import PolyDiT
    assert not any(m.startswith("speca_compile") for m in sys.modules), "imported too early"
    torch.manual_seed(0)
    model = PolyDiT().eval()
    compiled = torch.compile(model, backend="speca", options={"warmup": 2, "lowering": "eager", "acceptance": "step",
                                                         "min_speculative": 2})
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        for t in (0.9, 0.7, 0.5, 0.3):
            out = compiled(x, torch.full((2,), t))
    import speca_compile
    summary = speca_compile.stats(compiled)["trajectories"][-1]
    print(json.dumps({"decisions": summary["decisions"], "finite": bool(torch.isfinite(out).all())}))
""")


def test_compile_with_backend_name_only_in_a_fresh_process():
    repo = Path(__file__).resolve().parents[1]  # for `tests.reference_dit`
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"decisions": ["FF", "FF", "SS", "SS"], "finite": True}
