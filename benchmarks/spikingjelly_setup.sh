#!/usr/bin/env bash
# A separate virtual environment for benchmarks/spikingjelly_compare.py: .venv-sj/ beside .venv/,
# holding torch, SpikingJelly 2.0.0 and snnconv (editable), so the project's own .venv stays clean.
#
#   bash benchmarks/spikingjelly_setup.sh
#   .venv-sj/bin/python benchmarks/spikingjelly_compare.py --help
#
# Steps:
# 1. torch==2.13.0 first. Keep the exact pin: it resolves to the CPU wheel on this machine's disk;
#    an unpinned torch would pull a multi-GB CUDA build.
# 2. spikingjelly==2.0.0 with --no-deps. Its METADATA (printed below) declares torch>=2.6.0,
#    torchvision, torchaudio, h5py, loguru, matplotlib, numpy, packaging, requests, SciencePlots,
#    scipy, tensorboard and tqdm. torchaudio pins an exact torch release (it would swap the torch
#    wheel), and torchvision does not import beside this torch wheel, so neither is installed. Only
#    what `spikingjelly.activation_based.ann2snn`, `.neuron` and `.functional` import at module level
#    is installed: loguru (spikingjelly.logger), numpy, packaging, requests and tqdm
#    (ann2snn/utils.py). None of these touches torch.
# 3. snnconv itself, editable, without dependencies (torch and numpy are already there).
# The script ends by importing everything and printing the versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-sj"
PY="${PYTHON:-python3}"
SJ_VERSION=2.0.0
TORCH_VERSION=2.13.0

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

"${PIP[@]}" install "torch==$TORCH_VERSION"

# Show SpikingJelly's declared requirements before installing it without them.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"${PIP[@]}" download --no-deps "spikingjelly==$SJ_VERSION" -d "$TMP"
WHEEL="$(ls "$TMP"/spikingjelly-"$SJ_VERSION"-*.whl)"
echo "spikingjelly $SJ_VERSION declares:"
"$VENV/bin/python" - "$WHEEL" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print("  " + line)
EOF

"${PIP[@]}" install --no-deps "$WHEEL"
"${PIP[@]}" install loguru numpy packaging requests tqdm
"${PIP[@]}" install --no-deps -e "$ROOT"

# torch must still be the pinned CPU build, and torchvision must be absent.
OMP_NUM_THREADS=1 "$VENV/bin/python" - <<EOF
import importlib.metadata as md, importlib.util
import torch
assert torch.__version__.startswith("$TORCH_VERSION"), torch.__version__
assert importlib.util.find_spec("torchvision") is None, "torchvision must not be installed in .venv-sj"
from spikingjelly.activation_based import ann2snn, functional, neuron  # noqa: F401
import snnconv  # noqa: F401
print("torch", torch.__version__, "| spikingjelly", md.version("spikingjelly"), "| snnconv", md.version("snnconv"))
EOF
