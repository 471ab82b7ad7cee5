#!/usr/bin/env bash
# The whole test matrix with CuPy enabled, on a machine with an NVIDIA GPU.
#
#   bash ci/gpu.sh            # online: installs gruxp[test] and the CPU backends' requirements
#   WHEELS=.whl bash ci/gpu.sh  # offline: installs the wheels in .whl (array-api-compat,
#                               # array-api-strict, hypothesis) into /tmp/site first
#
# The image is expected to provide cupy (cupy-cuda12x or -13x) and numpy; torch and jax are used
# when present. Results (pytest summary, skip reasons, JUnit XML) go to $OUT (default ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"

if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
    python3 -m pip install -q ".[test]" $(python3 ci/requirements.py) || exit 1
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import cupy; print('cupy', cupy.__version__, 'devices', cupy.cuda.runtime.getDeviceCount())" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

python3 -m pytest -rs -q --junitxml="$OUT/junit.xml" 2>&1 | tee "$OUT/pytest.txt"
status=${PIPESTATUS[0]}
grep -E "^(SKIPPED|FAILED|ERROR)" "$OUT/pytest.txt" > "$OUT/skips_and_failures.txt"
tail -n 1 "$OUT/pytest.txt"
exit "$status"
