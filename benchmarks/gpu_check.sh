#!/usr/bin/env bash
# Device check for a CUDA machine, designed to finish in under 5 minutes from a bare machine that
# has Python with a CUDA build of torch preinstalled (no network needed; every step runs under a
# `timeout`, 4 min 25 s at most in all, plus the install):
#   (a) nvidia-smi and versions,
#   (b) `pytest -q -m gpu tests` (the sync test among them) when pytest and hypothesis are available,
#   (c) the throughput and sync benchmarks: bench_overhead.py, bench_scaling.py and
#       bench_host_sync.py with --device cuda;
#   (d) with EXTRAS=1 only (about 5 more minutes): bench_linesearch.py, diag_batch_invariance.py and
#       bench_adv_device.py.
# Results go to $OUT when it is set (else benchmarks/results/); a log of everything to gpu_check.log.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 by default
#   EXTRAS=1 OUT=/tmp/r bash benchmarks/gpu_check.sh
#   PYTHON=/opt/conda/bin/python OUT=/tmp/r bash benchmarks/gpu_check.sh
#   DEVICE=cpu SKIP_INSTALL=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#                                           # dry run of the same steps on the CPU (sizes are for a GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEV="${DEVICE:-cuda}"
RES="${OUT:-benchmarks/results}"
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
: > "$LOG"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

say "== (a) machine and versions"
run nvidia-smi || say "nvidia-smi not available"
run "$PY" - <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "CUDA build", torch.version.cuda, "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", "capability", f"{p.major}.{p.minor}")
for m in ("numpy", "scipy", "sklearn", "pytest", "hypothesis", "qpth"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(m, "not available:", type(exc).__name__)
EOF
if [ "$DEV" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "CUDA is not available to $PY: nothing to check"; exit 1
fi

if [ -z "${SKIP_INSTALL:-}" ]; then
  say "== install ncvx_core (editable, no dependencies; falls back to PYTHONPATH)"
  run "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || run "$PY" -m pip install -q --no-deps -e . \
    || say "pip install failed; using PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run "$PY" -c "import ncvx_core; print('ncvx_core', ncvx_core.__version__, ncvx_core.__file__)" || { say "ncvx_core does not import"; exit 1; }

say "== (b) GPU tests"
if grep -rqs "mark.gpu" tests; then
  if "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
    run timeout 60 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider --no-header -rf \
      || say "GPU tests: exit code $? (see above)"
  else
    say "pytest or hypothesis is not installed here: GPU tests skipped"
  fi
else
  say "no tests marked gpu: skipped"
fi

say "== (c) bench_overhead.py --device $DEV"
run timeout 65 "$PY" benchmarks/bench_overhead.py --device "$DEV" --out "$RES" \
  --batches 1,8,64,256,1024 --cnn-batches 1,8,64,128,256 --cnn-full-batches 1,8 --maxit 20 --budget 50 \
  || say "bench_overhead.py: exit code $?"

say "== (c) bench_host_sync.py --device $DEV"
run timeout 75 "$PY" benchmarks/bench_host_sync.py --device "$DEV" --out "$RES" --no-conformance \
  || say "bench_host_sync.py: exit code $?"

say "== (c) bench_scaling.py --device $DEV"
run timeout 65 "$PY" benchmarks/bench_scaling.py --device "$DEV" --out "$RES" \
  --b-sweep 1,16,256,1024,4096 --full-sweep 1,16,64 --n-sweep 64,3072,150528 --maxit 10 --budget 45 --point-timeout 30 \
  || say "bench_scaling.py: exit code $?"

if [ -n "${EXTRAS:-}" ]; then
  say "== (d) bench_linesearch.py --device $DEV"
  run timeout 120 "$PY" benchmarks/bench_linesearch.py --device "$DEV" --out "$RES" \
    --workloads mlp-attack,cnn-attack --batch 256 --repeats 1 \
    || say "bench_linesearch.py: exit code $?"

  say "== (d) diag_batch_invariance.py --device $DEV"
  run timeout 60 "$PY" benchmarks/diag_batch_invariance.py --device "$DEV" --out "$RES" \
    || say "diag_batch_invariance.py: exit code $?"

  say "== (d) bench_adv_device.py --device $DEV"
  run timeout 150 "$PY" benchmarks/bench_adv_device.py --device "$DEV" --out "$RES" --n 32 --n-min 8 \
    || say "bench_adv_device.py: exit code $?"
else
  say "== (d) extras skipped (EXTRAS=1 runs bench_linesearch.py, diag_batch_invariance.py, bench_adv_device.py)"
fi

say "== done; results in $RES"
ls -l "$RES" | tee -a "$LOG"
