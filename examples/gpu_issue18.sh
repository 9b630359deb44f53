#!/usr/bin/env bash
# Issue 18's GPU rows in one prepared script (docs/bench_gpu.md): speca bench at bf16, batch 8,
# 50 DDIM steps, 8 images, on the published DiT sizes dit_xl2 and dit_s2 (random weights):
# eager, torch.compile (default, max-autotune-no-cudagraphs, reduce-overhead) and speca (eager
# and inductor lowerings: the full path and tau0 0.1 / 0.2 / 0.4).
#
# For a lent GPU machine with PyTorch and no network; run it from anywhere in the repository.
#   * diffusers (the zoo's DiTs are diffusers' DiTTransformer2DModel) is installed from the
#     wheels in .whl/ when it is not importable (docs/bench_gpu.md: how to download them, and
#     `carry: [".whl"]`);
#   * speca-compile itself is installed from this tree (no index, no build isolation) into a
#     private target, so the torch_dynamo_backends entry point "speca" is found; the benches
#     run outside the tree (its speca_compile/ folder would shadow the installed package);
#   * results under $OUT (the device tool's folder; ./gpu18_results elsewhere): one .md and one
#     .json per bench run and gpu18.log with everything printed: 7 files, no subfolders.
#
# The runs share about 7.5 minutes, each under its own limit (a run's limit in seconds can be
# changed with LIMIT_A, LIMIT_B, LIMIT_C), most important first, so a slow compile costs the runs
# after it and not the whole script.  The limits are estimates from the H100 figures in
# docs/bench_h100.md, not measured on an H200.  A run stopped at its limit writes no table (the
# bench reports after each model); the progress lines in gpu18.log say how far it got.
set -u
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/gpu18_results}"
WORK=/tmp/gpu18
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"     # DEVICE=cpu: a smoke of this script's mechanics on a machine without a GPU
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20

COMMON=(--device "$DEVICE" --precision bf16 --steps 50 --images 8 --batch 8 --repeats 2 --acceptance budget --no-peers)

bench() {   # bench NAME LIMIT_S ARGS...: one speca bench run; its table and JSON copied to $OUT
  local name="$1" limit="$2"; shift 2
  echo; echo "== $name (limit ${limit} s): speca bench ${COMMON[*]} $*"
  local start=$SECONDS
  (cd "$WORK" && timeout --kill-after=15 "$limit" "$PY" -m speca_compile bench "${COMMON[@]}" "$@" --out "$WORK/$name")
  echo "== $name: exit $? after $((SECONDS - start)) s"
  if [ -f "$WORK/$name/bench.md" ]; then
    cp "$WORK/$name/bench.md" "$OUT/$name.md"; cp "$WORK/$name/bench.json" "$OUT/$name.json"
  else
    echo "== $name: no report (stopped before its model finished)"
  fi
}

main() {
  echo "== examples/gpu_issue18.sh $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"

  # -- installs: diffusers from .whl/ where missing, then this tree; both into a private target --
  local site="$WORK/site"
  mkdir -p "$site"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  cd "$WORK"
  if ! "$PY" -c "import diffusers" 2>/dev/null; then
    if ! ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
      echo "diffusers is not importable and $REPO/.whl holds no wheels: see docs/bench_gpu.md"; return 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$REPO"/.whl/*.whl || { echo "installing .whl/*.whl failed"; return 2; }
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$site" "$REPO" || { echo "installing speca-compile from $REPO failed"; return 2; }
  DEVICE="$DEVICE" "$PY" - <<'EOF' || return 2
import importlib.metadata as md, os
import torch, diffusers, speca_compile
from speca_compile.options import PRECISIONS
assert os.environ["DEVICE"] == "cpu" or torch.cuda.is_available(), "PyTorch sees no CUDA device"
backends = [e.name for e in md.entry_points(group="torch_dynamo_backends")]
assert "speca" in backends, f"the speca backend's entry point is missing: {backends}"
assert "bf16" in PRECISIONS, f"this speca_compile has no precision 'bf16': {PRECISIONS}"
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {gpu}, "
      f"diffusers {diffusers.__version__}, speca_compile from {speca_compile.__file__}")
EOF

  # 1. the acceptance on DiT-XL/2: eager bf16, torch.compile default, the speca full path and
  #    tau0=0.1 on the inductor lowering (4 rows)
  bench a_dit_xl2 "${LIMIT_A:-200}" --models dit_xl2 --lowerings inductor --compile-modes default --tau0 0.1
  # 2. DiT-XL/2: the eager lowering at tau0 0.1 / 0.2 / 0.4 and the two other torch.compile modes
  #    (Inductor's caches from run 1 are warm)
  bench b_dit_xl2 "${LIMIT_B:-150}" --models dit_xl2 --lowerings eager \
    --compile-modes max-autotune-no-cudagraphs,reduce-overhead --tau0 0.1,0.2,0.4
  # 3. DiT-S/2: both lowerings at tau0 0.1 / 0.2, torch.compile default and reduce-overhead
  bench c_dit_s2 "${LIMIT_C:-90}" --models dit_s2 --lowerings eager,inductor --compile-modes default,reduce-overhead \
    --tau0 0.1,0.2

  echo; echo "== done after ${SECONDS} s; in $OUT:"; ls -l "$OUT"
}

main 2>&1 | tee "$OUT/gpu18.log"
exit "${PIPESTATUS[0]}"
