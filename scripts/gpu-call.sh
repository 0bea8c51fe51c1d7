#!/usr/bin/env bash
# One device call: run gpu-suite.sh stages in order inside one time budget, then pack what they
# wrote into $OUT as tarballs (the device tool returns at most 8 files, two folders deep).
#
#   scripts/gpu-call.sh STAGE[:ARG,ARG] ...     e.g.  scripts/gpu-call.sh check hw calibrate
#
# Outputs accumulate in out/gpu (ignored by git, so it stays on a warm machine between calls);
# each call packs all of it. CALL_BUDGET_S (default 550) bounds the whole call: a stage gets what
# is left, and none starts with under 40 s left.
set -uo pipefail
DEST=${OUT:-}
export OUT=out/gpu
mkdir -p "$OUT"
budget=${CALL_BUDGET_S:-550}
# which commit this is (the device's copy has no .git; `make device-wheels` writes .whl/CODE)
[ -z "${LIGERSIM_CODE:-}" ] && [ -s .whl/CODE ] && export LIGERSIM_CODE=$(tr -d '\n' < .whl/CODE)
pack() {
  [ -n "$DEST" ] || return 0
  tar -czf /tmp/gpu.tar.gz out/gpu profiles/*.yaml 2>/dev/null
  split -b 15m -d /tmp/gpu.tar.gz "$DEST/gpu.tar.gz.part"
  ls -l "$DEST"
}
trap pack EXIT
for item in "$@"; do
  stage=${item%%:*}
  args=()
  [ "$item" != "$stage" ] && IFS=, read -r -a args <<< "${item#*:}"
  left=$((budget - SECONDS))
  if [ "$left" -lt 40 ]; then echo "gpu-call: no time left for $item"; continue; fi
  echo "=== $item ($left s left) $(date -u +%T)"
  STAGE_BUDGET_S=$((left - 15)) CALIBRATE_TIMEOUT_S=$((left - 15)) \
    timeout "$left" scripts/gpu-suite.sh "$stage" "${args[@]}" 2>&1 | tee -a "$OUT/$stage.log"
  echo "=== $item rc ${PIPESTATUS[0]} after $SECONDS s"
done
