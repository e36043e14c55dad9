#!/usr/bin/env bash
# The one script to run on a lent GPU, all under nine minutes:
#   1. install the project (no dependencies fetched: the machine is offline and has torch/triton/pandas);
#   2. the tests on the GPU (pytest -x, capped at 180 s), among them the first real run of the conv forward's
#      TMA weight loads (B_DESCRIPTOR, a tuning candidate only: tests/test_conv.py forces it);
#   3. the `quick` benchmark suite (every op, fwd and fwd+bwd, bf16 channels_last; capped at 150 s);
#   4. host overhead (bench/host.py --gpu, capped at 30 s): host and end-to-end us per call with real launches
#      against PyTorch's op, eager and under CUDA-graph replay, after the CPU table with launches stubbed;
#   5. the cost model's calibration: every quick probe launch of `python -m bench.cost --quick` (and its
#      reference) predicted with this machine's triton and timed with do_bench (capped at 100 s), with the
#      conv forward's TMA candidate beside its heuristic launches (--also B_DESCRIPTOR=1: rows whose key ends
#      in its config; unrun on a GPU before, so compare it with the heuristic's row of the same probe);
#   6. the `models` suite (torchvision's networks converted, batch 32 at 224x224, bf16 channels_last, against
#      eager and torch.compile; inference of every model first, then training steps; capped at 120 s;
#      it says so and exits 0 where torchvision is missing);
#   7. the `deeplab` suite with whatever time is left (skipped under 90 s).
# Each step's cap is also cut to the time left of `total`, so later steps shrink (or are skipped) first.
# Results go to $OUT when set (the device tool brings back what is there), else bench/out/: pytest.log,
# bench.log (with the host tables), {quick,deeplab}.{csv,md,png}, models.{csv,md}, cost.log,
# cost_calibration.csv and cost/cost.{csv,md}.
# Usage, from anywhere: bash bench/gpu_check.sh   (PYTHON=... to pick the interpreter; default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# Tests check correctness: tuning every test shape would only spend the time cap. bench/ turns it off too.
export TRITONCONV_AUTOTUNE=0
total=530            # seconds for everything, inside the nine minutes
start=$SECONDS
left() { echo $((total - (SECONDS - start))); }
status=()

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -n 2
# tests/test_device.py runs the ops on the last GPU while the first is current: a real check of the launch
# guard only when there is more than one.
"$python" -c "import torch; n = torch.cuda.device_count(); print(f'GPUs: {n}; multi-GPU launch guard ' + ('checked for real on cuda:%d with cuda:0 current' % (n - 1) if n > 1 else 'not checked for real (%d GPU): only simulated in tests/test_device.py' % n))"

echo "== install ($(left) s left)"
timeout 60 "$python" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
status+=("install=${PIPESTATUS[0]}")

echo "== tests on the GPU ($(left) s left)"
# test_static.py compiles for sm_90/sm_80 on the CPU: CI runs it, the GPU's minutes are for the rest.
timeout 180 "$python" -m pytest -q -x -p no:cacheprovider --ignore=tests/test_static.py tests 2>&1 | tee "$out/pytest.log" | tail -n 15
status+=("tests=${PIPESTATUS[0]}")

# A suite gets `cap` seconds; it starts no new case after cap - margin s (default 40; a model of the models
# suite takes up to a minute, torch.compile included), so its tables are written in time.
run_suite() {
    local suite=$1 cap=$2 margin=${3:-40}
    echo "== suite $suite (cap ${cap} s, $(left) s left)"
    timeout "$cap" "$python" -m bench --suite "$suite" --out "$out" --budget $((cap - margin)) 2>&1 | tee -a "$out/bench.log"
    status+=("$suite=${PIPESTATUS[0]}")
}

cap=$(left); [ "$cap" -gt 150 ] && cap=150
if [ "$cap" -ge 60 ]; then run_suite quick "$cap"; else status+=("quick=skipped"); fi
cap=$(left); [ "$cap" -gt 30 ] && cap=30
if [ "$cap" -ge 10 ]; then
    echo "== host overhead (cap ${cap} s, $(left) s left)"
    timeout "$cap" "$python" -m bench.host --gpu --number 300 --repeats 5 2>&1 | tee -a "$out/bench.log"
    status+=("host=${PIPESTATUS[0]}")
else
    status+=("host=skipped")
fi

# Predicted against measured time per launch (bench/cost.py); it starts no launch after cap - 15 s.
cap=$(left); [ "$cap" -gt 100 ] && cap=100
if [ "$cap" -ge 40 ]; then
    echo "== cost model calibration (cap ${cap} s, $(left) s left)"
    timeout "$cap" "$python" -m bench.cost --quick --also B_DESCRIPTOR=1 --jobs "$(nproc)" --out "$out/cost" \
        --calibrate "$out/cost_calibration.csv" --calibrate-seconds $((cap - 15)) 2>&1 \
        | grep -v "compiling:" | tee "$out/cost.log" | tail -n 5
    status+=("cost=${PIPESTATUS[0]}")
else
    status+=("cost=skipped")
fi

cap=$(left); [ "$cap" -gt 120 ] && cap=120
if [ "$cap" -ge 90 ]; then run_suite models "$cap" 70; else status+=("models=skipped"); fi
cap=$(($(left) - 5))
if [ "$cap" -ge 90 ]; then run_suite deeplab "$cap"; else status+=("deeplab=skipped"); fi

echo "== done in $((SECONDS - start)) s: ${status[*]} (exit codes; 124 = hit its time cap)"
ls -l "$out"
