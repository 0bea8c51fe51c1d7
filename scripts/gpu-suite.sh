#!/usr/bin/env bash
# The GPU deliverables (issues 4, 5, 7) in stages that each fit one device call (< 10 min).
#
#   scripts/gpu-suite.sh STAGE [ARGS]     run from the repository root on the GPU machine
#
# Stages (outputs under $OUT, default out/gpu; copy them back into the repository between calls):
#   check                 GPU, driver and package versions; the CUDA tests; an 8-job decode-heavy
#                         `hw run` timed with CUDA events and with CUPTI (compare their events.parquet)
#   calibrate             `ligersim calibrate` of the validation suite's shapes into
#                         profiles/$PROFILE.yaml (resumes a partial profile found there), copied to
#                         $OUT/profiles/ even when the call's time limit interrupts it
#   validate [SCN ...|all|rest]  `ligersim validate --timing $TIMING` (use TIMING=both) of each scenario (default: scenarios/validation/*.yaml
#                         that have no results/validation/NAME/summary.json yet; `all`: every one; `rest`: those without
#                         $OUT/validation/NAME/summary.json, after a cut-off `all` on a machine still warm) -> $OUT/validation/NAME,
#                         starting none after STAGE_BUDGET_S (540) seconds; a folder without
#                         summary.json was cut off: run it again
#   hwhost                host microseconds per kernel of `hw run`, and a cProfile of where they go
#   hw                    issue 4: the GLM-130B encoder, 4 layers, TP 4 rank 0, 200 jobs, intra_op and
#                         interleaved -> $OUT/hw/NAME (summary.json, requests.csv, events.parquet)
#
# On the device image (torch, triton, numpy, pandas, pyarrow, matplotlib, yaml, tqdm present),
# simpy and pydantic travel as wheels: `make device-wheels` here puts them in .whl/ (ignored by
# git); name `.whl` in the device call's `carry`. PROFILE defaults to the GPU's name (h100-sxm, h200);
# a path ending in .yaml is used as is. DEVICE=cpu PYTHON=.venv/bin/python dry-runs a stage on CPU.
set -uo pipefail
stage=${1:?usage: scripts/gpu-suite.sh check|calibrate|validate|hw|hwhost [ARGS]}
shift
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${DEVICE:-cuda}" != cpu ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu-suite: installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the stages' logic on a machine without a GPU
TIMING=${TIMING:-events}  # validate: events, cupti or both (hw/validate.py); hwhost: events or cupti
[ "$DEVICE" = cpu ] && TIMING=events
L="$PY -m sim.cli"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpu" in
  *H200*) default_profile=h200 ;;
  *H100*) default_profile=h100-sxm ;;
  *) default_profile=gpu ;;
esac
PROFILE=${PROFILE:-$default_profile}
case "$PROFILE" in *.yaml) prof=$PROFILE ;; *) prof=profiles/$PROFILE.yaml ;; esac

case "$stage" in
  check)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
    python3 -c "import torch, triton, simpy, pydantic; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'simpy', simpy.__version__, 'pydantic', pydantic.__version__, \
torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"
    nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,persistence_mode --format=csv \
      | tee -a "$OUT/gpu.csv"  # the card as found (read only)
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_hw_cuda.py 2>&1 | tee "$OUT/test_hw_cuda.log"
    for t in events cupti; do  # both timers on one small run: which one is exact (issue 4)
      timeout 120 $L hw run scenarios/validation/gen-intra-tp4-decode.yaml --jobs 8 --device cuda --timing $t \
        -o "$OUT/check-$t" || echo "gpu-suite: check-$t failed (rc $?)"
    done
    ;;
  calibrate)
    mkdir -p "$OUT/profiles"
    trap 'cp -f "$prof" "$OUT/profiles/" 2>/dev/null' EXIT
    # stopped well inside a 10-minute call, so the EXIT trap still copies the (partial) profile out;
    # the next call resumes it
    # SIGINT: calibration saves what it measured on Ctrl-C (KeyboardInterrupt); a SIGTERM would lose
    # everything since its last periodic save
    timeout -s INT "${CALIBRATE_TIMEOUT_S:-540}" $L calibrate -o "$prof" --device "$DEVICE" "$@"
    ;;
  validate)
    scns=("$@")
    if [ "${scns[*]:-}" = all ]; then
      scns=(scenarios/validation/*.yaml)
    elif [ "${scns[*]:-}" = rest ]; then  # a cut-off `all` on a machine still warm: those not finished here
      scns=()
      for s in scenarios/validation/*.yaml; do
        [ -f "$OUT/validation/$(basename "$s" .yaml)/summary.json" ] || scns+=("$s")
      done
    elif [ ${#scns[@]} -eq 0 ]; then
      for s in scenarios/validation/*.yaml; do
        n=$(basename "$s" .yaml)
        [ -f "results/validation/$n/summary.json" ] || scns+=("$s")
      done
    fi
    [ -f "$prof" ] || { echo "gpu-suite: $prof is missing: run the calibrate stage first" >&2; exit 2; }
    deadline=$((SECONDS + ${STAGE_BUDGET_S:-540}))  # stop starting scenarios before the call's limit
    for s in "${scns[@]}"; do
      n=$(basename "$s" .yaml)
      left=$((deadline - SECONDS))
      if [ "$left" -lt 60 ]; then
        echo "gpu-suite: time budget spent; $n and the rest are for the next call"; break
      fi
      echo "== $n"
      timeout "$left" $L validate "$s" --profile "$prof" -o "$OUT/validation/$n" --device "$DEVICE" \
        --timing "$TIMING" \
        || echo "gpu-suite: $n failed or timed out (rc $?)"
    done
    ;;
  hw)
    mkdir -p "$OUT/hw"
    # wall-clock makespan and JCT under CUDA-event timing (no profiler on the host); CUPTI for
    # the kernels' true busy and overlap fractions
    for t in events cupti; do
      [ "$DEVICE" = cpu ] && [ $t = cupti ] && continue
      for p in intra interleaved; do
        n=glm130b-4l-tp4-$p
        $L hw run "scenarios/hw/$n.yaml" --device "$DEVICE" --timing $t -o "$OUT/hw/$n-$t" \
          || echo "gpu-suite: $n ($t) failed (rc $?)"
      done
    done
    { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; date -u +%F; } \
      > "$OUT/hw/device.txt"
    ;;
  hwhost)  # the hw executor's host cost per kernel, and where it goes (bench/hw_host.py)
    if [ $# -gt 0 ]; then
      $PY bench/hw_host.py "$@" --device "$DEVICE" --timing "$TIMING" -o "$OUT/hwhost"
    else
      $PY bench/hw_host.py scenarios/hw/glm130b-4l-tp4-intra.yaml scenarios/hw/glm130b-4l-tp4-interleaved.yaml \
        --device "$DEVICE" --timing "$TIMING" -o "$OUT/hwhost"
      $PY bench/hw_host.py scenarios/validation/gen-intra-tp4-decode.yaml --jobs 8 --device "$DEVICE" \
        --timing "$TIMING" -o "$OUT/hwhost"
    fi
    ;;
  *)
    echo "gpu-suite: unknown stage $stage (check, calibrate, validate, hw, hwhost)" >&2; exit 2 ;;
esac
