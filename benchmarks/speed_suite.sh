#!/usr/bin/env bash
# Every speed figure the README's performance tables quote, measured in one go on this machine,
# each command's output kept in OUT_DIR (default benchmarks/results/suite-<date>-<isa>):
#
#     bash benchmarks/speed_suite.sh [OUT_DIR]                           # this CPU's own code
#     bash benchmarks/emulate_avx2.sh bash benchmarks/speed_suite.sh     # AVX2 code, labelled emulated
#
# 1. machine.txt: lscpu's model, flags that matter (avx2, avx512f, neon), cores, the commit.
# 2. demo.txt: `snnconv demo --data-root $DATA_ROOT` from a fresh clone of this commit (git clone
#    into a temporary folder, run with its own sources on PYTHONPATH) and an empty kernel cache,
#    so the kernel build and the data load are included; wall time by /usr/bin/time.
# 3. sim_speed.txt: benchmarks/sim_speed.py --models resnet20,vgg16-paper --T 16,32.
# 4. spikingjelly_compare.txt: benchmarks/spikingjelly_compare.py --images 256 --repeats 3.
# 5. time_to_accuracy.txt (+ .json): benchmarks/time_to_accuracy.py, snnconv and SpikingJelly.
# Then benchmarks/suite_report.py OUT_DIR prints the README's rows and issue 14's targets.
# Steps 4 and 5 need .venv-sj (bash benchmarks/spikingjelly_setup.sh; or SJ_PYTHON); without it
# they are reported as not run and the script exits 1 at the end. The outputs are written into
# OUT_DIR.partial and take OUT_DIR's place only when every step has ended: a failed or stopped
# run leaves an earlier run's folder as it was. Nothing else may hold the cores while it
# runs (12 min on a 2-core Zen 5, 16 with AVX2 code; longer on slower machines). Quote figures
# from these files with the machine line; under emulation they are AVX2 code on this CPU, not an
# AVX2 machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-$root/.venv/bin/python}
SJ=${SJ_PYTHON:-$root/.venv-sj/bin/python}
DATA_ROOT=$(cd "${DATA_ROOT:-../shared/data}" && pwd)  # absolute: the demo runs in the clone
isa=$("$PY" -c "from snnconv.kernels import backend
label = backend.isa_label()
print(label.split()[0] + ('-emulated' if 'emulated' in label else ''))")
final=${1:-benchmarks/results/suite-$(date -u +%Y%m%d)-$isa}
out=$final.partial
rm -rf "$out"
mkdir -p "$out"
missing=0

{
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core)'
  echo "flags: $(grep -owE 'avx2|avx512f|asimd' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "code: $("$PY" -c "from snnconv.kernels import backend; print(backend.isa_label())")"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
  date -u
} | tee "$out/machine.txt"

clone=$(mktemp -d)
cache=$(mktemp -d)
trap 'rm -rf "$clone" "$cache"' EXIT
git clone -q "$root" "$clone/snnconv"
(cd "$clone/snnconv" && env XDG_CACHE_HOME="$cache" PYTHONPATH="$clone/snnconv/src" \
  /usr/bin/time -f "wall %e s, user %U s, sys %S s" \
  "$PY" -m snnconv demo --data-root "$DATA_ROOT") 2>&1 | tee "$out/demo.txt"

"$PY" benchmarks/sim_speed.py --models resnet20,vgg16-paper --T 16,32 2>&1 | tee "$out/sim_speed.txt"

if [ -x "$SJ" ]; then
  "$SJ" benchmarks/spikingjelly_compare.py --data-root "$DATA_ROOT" --images 256 --repeats 3 2>&1 \
    | tee "$out/spikingjelly_compare.txt"
  "$SJ" benchmarks/time_to_accuracy.py --data-root "$DATA_ROOT" --out "$out/time_to_accuracy.json" \
    2>&1 | tee "$out/time_to_accuracy.txt"
else
  echo "speed_suite.sh: $SJ missing: spikingjelly_compare and time_to_accuracy not run" \
    "(bash benchmarks/spikingjelly_setup.sh)" | tee "$out/NOT_RUN.txt" >&2
  missing=1
fi
if [ -e "$final" ]; then mv "$final" "$out.old"; fi
mv "$out" "$final"
rm -rf "$out.old"
echo "speed_suite.sh: figures in $final"
# the README's rows and issue 14's targets, met or missed (needs every step's output)
if [ $missing -eq 0 ]; then "$PY" benchmarks/suite_report.py "$final"; fi
exit $missing
