#!/usr/bin/env bash
# The CUDA checks of the simulator, as run on a lent GPU machine (one call, ~5 minutes on an H100):
# the simulator tests on the GPU (Triton scan vs the PyTorch loop, fast path vs the stepwise
# oracle), then sim_speed.py with the Triton scan and with PyTorch ops only (SNNCONV_FUSED=0),
# then the CUDA profile. Uses the machine's own CUDA PyTorch (+ triton) with the repo on PYTHONPATH:
#     bash benchmarks/cuda_checks.sh [LOG_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-runs/cuda}
mkdir -p "$log"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
SNNCONV_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/test_fused.py \
    tests/test_simulate.py 2>&1 | tee "$log/tests.txt" | tail -5
python3 benchmarks/sim_speed.py --device cuda 2>&1 | tee "$log/sim_speed.txt" | grep -v '^{'
SNNCONV_FUSED=0 python3 benchmarks/sim_speed.py --device cuda --memory-models none 2>&1 \
    | tee "$log/sim_speed_pytorch_only.txt" | grep -v '^{'
for layout in --channels-last ""; do
    python3 benchmarks/sim_profile.py --device cuda --T 32 $layout 2>&1 | grep -v USDT \
        | tee -a "$log/sim_profile.txt"
done
