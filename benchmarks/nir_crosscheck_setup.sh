#!/usr/bin/env bash
# The NIR cross-check's own virtual environment (not CI's): snnconv with nir, and snnTorch 1.0.0
# with nirtorch 2.6 (the NIR importer snnTorch uses). It lives in build/ (ignored by git).
#   bash benchmarks/nir_crosscheck_setup.sh
#   build/nir-crosscheck-venv/bin/python benchmarks/nir_crosscheck.py --data-root ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-build/nir-crosscheck-venv}
python3 -m venv "$VENV"
. "$VENV/bin/activate"
pip install --quiet torch==2.13.0  # the CPU wheel the README pins
pip install --quiet -e . "nir>=1.0" "nirtorch==2.6" "snntorch==1.0.0"
python -c "import nir, nirtorch, snntorch, snnconv; print('nir', nir.__version__, 'snntorch', snntorch.__version__, 'snnconv', snnconv.__version__)"
