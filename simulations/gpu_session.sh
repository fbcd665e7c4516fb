#!/usr/bin/env bash
# One GPU session's checks (#11), from the repository root of a machine with a CUDA GPU:
# the CUDA tests (skipped everywhere else), then the LoRA vs full fine-tuning bench.
# Results go to $OUT (default /tmp/gpu_out); render the bench's JSON into BENCHMARKS.md with
#   python -m simulations.gpu_bench --render $OUT/gpu.json
# Python packages missing there travel as wheels in .whl/ (docs/backbones.md, "Devices").
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia.txt"
python3 -c "import sys, torch, peft, monai; print(sys.version.split()[0], torch.__version__, \
torch.version.cuda, 'peft', peft.__version__, 'monai', monai.__version__)" | tee "$OUT/versions.txt"
# each file alone, so that one that cannot be collected there does not stop the others;
# test_backbones.py: its tests parametrized by tests.devices.DEVICES, GPU cases only
for tests in tests/unicon_core/test_cuda.py "tests/unicon_core/model/test_backbones.py -k cuda" \
             tests/server/test_cuda_federation.py; do
  # shellcheck disable=SC2086  # $tests holds a path and its options
  timeout "${TEST_S:-240}" python3 -m pytest -q -p no:cacheprovider -rA $tests 2>&1 \
    | tee -a "$OUT/cuda_tests.txt" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Error"
done
if [ "${BENCH_S:-300}" -gt 0 ]; then
  timeout "${BENCH_S:-300}" python3 -m simulations.gpu_bench --weights none \
    --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_bench.txt" | tail -20
fi
