#!/usr/bin/env bash
# The GPU checks in one run on a lent device machine (DEVELOPERS.md, "GPU checks"):
# the `gpu`-marked tests, the GPU benchmarks of bench/test_perf.py and the end-to-end
# throughput run, each bounded in time, every result under $OUT.
#
#   here:   python scripts/device_kit.py prepare      (writes .device/, ~41 MiB)
#   there:  run(command="bash scripts/device_check.sh", carry=[".device"], timeout_s=420)
#
# DEVICE=cpu PROMPTS=256 BATCHES=32 PYTHON=.venv/bin/python bash scripts/device_check.sh
# runs the same steps here (the GPU tests then skip), to check the script itself.
set -uo pipefail
OUT=${OUT:-/tmp/probewatch-device-out}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/probewatch-site}
DEVICE=${DEVICE:-cuda}
PROMPTS=${PROMPTS:-20000}
BATCHES=${BATCHES:-256 1024}
PYTEST_K=${PYTEST_K:-}  # a -k filter, to rerun only some GPU tests
RUN_TESTS=${RUN_TESTS:-1}  # 0: skip the GPU tests
RUN_THROUGHPUT=${RUN_THROUGHPUT:-1}  # 0: skip the one-process throughput run
WORKERS=${WORKERS:-}  # e.g. "1 4 8 12": also end to end with detection sharded over that many processes
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$SITE"
started=$(date +%s)
step() { echo "== $(( $(date +%s) - started ))s: $*"; }

step "install faiss, the kit's model and probewatch into $SITE"
[ -d .device/wheels ] || { echo "no .device/: run 'python scripts/device_kit.py prepare' and carry .device"; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .device/wheels/*.whl || exit 1
"$PY" scripts/device_kit.py unpack --site "$SITE" || exit 1
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target "$SITE" . || exit 1
export PYTHONPATH="$SITE"
(nvidia-smi || true) >"$OUT/nvidia-smi.txt" 2>&1
"$PY" - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import faiss, numpy, torch, probewatch, sentence_transformers
from probewatch.kernels import cupy_available
print("probewatch", probewatch.__version__, "| torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "| faiss", faiss.__version__, "gpu indexes", hasattr(faiss, "StandardGpuResources"),
      "| cupy", cupy_available(), "| numpy", numpy.__version__, "| sentence-transformers", sentence_transformers.__version__)
EOF

if [ "$RUN_TESTS" = 1 ]; then
    step "pytest -m gpu (tests that need only CuPy, torch or faiss-gpu skip with the reason when those are missing)"
    timeout 180 "$PY" -m pytest -m gpu -rs -p no:cacheprovider tests/gpu tests/unit/test_kernels.py bench/test_perf.py ${PYTEST_K:+-k "$PYTEST_K"} \
        --benchmark-json="$OUT/bench_gpu.json" --benchmark-columns=min,median,mean,ops,rounds 2>&1 | tee "$OUT/pytest_gpu.txt"
    echo "pytest exit ${PIPESTATUS[0]}" | tee -a "$OUT/pytest_gpu.txt"
fi

if [ "$RUN_THROUGHPUT" = 1 ]; then
    step "end-to-end throughput"
    # shellcheck disable=SC2086  # BATCHES is a list of numbers
    timeout 150 "$PY" -m bench.gpu_throughput --device "$DEVICE" --prompts "$PROMPTS" --batch $BATCHES \
        --out "$OUT/throughput.json" --profile "$OUT/profile_detect.txt" 2>&1 | grep -v "^Loading weights" | tee "$OUT/throughput.txt"
fi
if [ -n "$WORKERS" ]; then
    step "end to end, detection sharded by account over $WORKERS processes"
    # shellcheck disable=SC2086  # WORKERS is a list of numbers
    timeout 240 "$PY" -m bench.gpu_throughput --device "$DEVICE" --prompts "$PROMPTS" --batch 1024 \
        --detect-workers $WORKERS --out "$OUT/sharded.json" 2>&1 | grep -v "^Loading weights" | tee "$OUT/sharded.txt"
fi
step "done"
