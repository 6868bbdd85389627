#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run on a machine that has one (a lent device
# machine has torch, pytest, scikit-learn, matplotlib, tqdm and pyyaml; pydantic may have to
# come as wheels in .whl/): the whole test suite, its CUDA-parametrised tests included; a
# YAML run with device: cuda; and benchmarks/estimators.py --device cuda for every estimator
# at 10, 100 and 1000 inner steps. Logs and JSON go to $OUT (default /tmp/cuda_check).
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
$python -m pytest -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -25
$python -m bilevel.cli run examples/sinusoid.yaml --out /tmp/cuda_run --set device=cuda \
    --set steps=50 --set progress=false 2>&1 | tee "$OUT/run.log"
timeout 300 $python benchmarks/estimators.py --device cuda --steps 10,100,1000 --repeats 3 \
    > "$OUT/estimators_cuda.json" 2> "$OUT/estimators_cuda.err"
echo "estimators benchmark exit $?"; tail -c 3000 "$OUT/estimators_cuda.json"
