#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run on a machine that has one (a lent device
# machine has torch, pytest, pytest-xdist, scikit-learn, matplotlib, tqdm and pyyaml; the
# other dependencies come as wheels in .whl/): the whole test suite, its CUDA tests included,
# on cores 6-15 with pytest-xdist, beside benchmarks/compiled.py --device cuda (eager,
# compiled, compiled with CUDA graphs; every estimator at 10, 100 and 1000 inner steps) on
# cores 0-5. Logs and JSON go to $OUT (default /tmp/cuda_check).
#
#     bash benchmarks/cuda_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/cuda_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if [ -d .whl ]; then
    $python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
# The package's entry points (problems by name) need its metadata: an editable install.
$python -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"
(taskset -c 6-15 timeout "${TEST_TIMEOUT:-360}" $python -m pytest -q -p no:cacheprovider \
    -n 10 > "$OUT/pytest.log" 2>&1; echo "pytest exit $?" >> "$OUT/pytest.log") &
taskset -c 0-5 timeout "${BENCH_TIMEOUT:-360}" $python benchmarks/compiled.py --device cuda \
    --repeats 7 --deadline "${BENCH_DEADLINE:-270}" > "$OUT/compiled.cuda.json" \
    2> "$OUT/compiled.cuda.err"
echo "compiled benchmark exit $?"
wait
grep -E "passed|failed|error|exit" "$OUT/pytest.log" | tail -40
$python - "$OUT/compiled.cuda.err" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        print(f"{r['case'][:34]:34} eager {1e3 * r['eager_s']:9.2f} ms  compiled "
              f"{1e3 * r['compiled_s']:8.2f}  graphs {1e3 * r['graphs_s']:8.2f}  compile "
              f"{r['compile_s']:5.1f}/{r['graphs_compile_s']:5.1f} s  diff "
              f"{r['relative_difference']:.1e}/{r['graphs_relative_difference']:.1e}")
EOF
tail -c 1500 "$OUT/compiled.cuda.err" | grep -v '^{' || true
