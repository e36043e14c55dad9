#!/usr/bin/env bash
# The one script to run on a lent GPU, all under eight minutes:
#   1. install the project (no dependencies fetched: the machine is offline and has torch/triton/pandas);
#   2. the tests on the GPU (pytest -x, capped at 200 s);
#   3. the `quick` benchmark suite (every op, fwd and fwd+bwd, bf16 channels_last; capped at 170 s);
#   4. host overhead (bench/host.py --gpu, capped at 30 s): host and end-to-end us per call with real launches
#      against PyTorch's op, eager and under CUDA-graph replay, after the CPU table with launches stubbed;
#   5. the `deeplab` suite with whatever time is left (skipped under 90 s).
# Results go to $OUT when set (the device tool brings back what is there), else bench/out/, as at most
# eight files in one folder: pytest.log, bench.log (with the host tables), {quick,deeplab}.{csv,md,png}.
# Usage, from anywhere: bash bench/gpu_check.sh   (PYTHON=... to pick the interpreter; default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# Tests check correctness: tuning every test shape would only spend the time cap. bench/ turns it off too.
export TRITONCONV_AUTOTUNE=0
total=470            # seconds for everything, inside the eight minutes
start=$SECONDS
left() { echo $((total - (SECONDS - start))); }
status=()

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -n 2

echo "== install ($(left) s left)"
timeout 60 "$python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
status+=("install=${PIPESTATUS[0]}")

echo "== tests on the GPU ($(left) s left)"
# test_static.py compiles for sm_90/sm_80 on the CPU: CI runs it, the GPU's minutes are for the rest.
timeout 200 "$python" -m pytest -q -x -p no:cacheprovider --ignore=tests/test_static.py tests 2>&1 | tee "$out/pytest.log" | tail -n 15
status+=("tests=${PIPESTATUS[0]}")

# A suite gets `cap` seconds; it starts no new case after cap - 40 s, so its tables are written in time.
run_suite() {
    local suite=$1 cap=$2
    echo "== suite $suite (cap ${cap} s, $(left) s left)"
    timeout "$cap" "$python" -m bench --suite "$suite" --out "$out" --budget $((cap - 40)) 2>&1 | tee -a "$out/bench.log"
    status+=("$suite=${PIPESTATUS[0]}")
}

cap=$(left); [ "$cap" -gt 170 ] && cap=170
if [ "$cap" -ge 60 ]; then run_suite quick "$cap"; else status+=("quick=skipped"); fi
echo "== host overhead (cap 30 s, $(left) s left)"
timeout 30 "$python" -m bench.host --gpu --number 300 --repeats 5 2>&1 | tee -a "$out/bench.log"
status+=("host=${PIPESTATUS[0]}")

cap=$(($(left) - 5))
if [ "$cap" -ge 90 ]; then run_suite deeplab "$cap"; else status+=("deeplab=skipped"); fi

echo "== done in $((SECONDS - start)) s: ${status[*]} (exit codes; 124 = hit its time cap)"
ls -l "$out"
