#!/usr/bin/env bash
# kotune against Unsloth's own loop on full-length rows (bs 2 x 2,048), in the order given, in one device call.
# The hosts drift by several percent within a call, so alternate the two sides (Unsloth, kotune, Unsloth,
# kotune) and compare neighbours. Run on the GPU device from the repo root, after the setup in bench/README.md
# (.whl/ with the Unsloth site folder, the tokenizer, KoAlpaca and .whl/peer_bs2.py):
#
#   SEQ="peer-first pf1+UNSLOTH_GC_PREFETCH=1 plain1 peer-last" bash bench/gpu_vs_unsloth.sh
#
# Each word of SEQ is one run:
#   peer-<tag>           Unsloth's loop (.whl/peer_bs2.py unsloth, PEER_STEPS steps, per-step times kept):
#                        $OUT/unsloth-<tag>.json
#   <tag>[+VAR=value...] kotune's train stage with gpu_backends.sh's lever LEVER (default the qlora-24gb-unsloth
#                        levers; +LEVER=<name> for this run only), DATA=full, KOTUNE_STEPS steps logged every KOTUNE_LOGGING, with those
#                        environment variables set for that run only (+STEPS=, +LOGGING= for its length): $OUT/kotune_<lever>-<tag>.json and
#                        steps_<...>.csv (+HOST_LOAD=1: host_<...>.txt too, bench/host_load.py's report of its CPU use)
# KOTUNE_LOGGING=1 makes kotune's figure the median step, Unsloth's statistic (default 10: 10-step windows).
# At most 8 files come back from the device: keep SEQ to what fits (gpu.txt, table.md, one JSON per peer run,
# two files per kotune run, three with HOST_LOAD). Each kotune run prints how Unsloth's offloaded checkpoints were reloaded (GCSTATS: whether
# UNSLOTH_GC_PREFETCH was on and how many reloads it queued ahead), so a lever that did not engage shows.
set -uo pipefail
R=${OUT:-/tmp/kotune-vs}
mkdir -p "$R" /tmp/peer
source bench/device_env.sh
cp bench/unsloth_gc_stats.py /tmp/site/sitecustomize.py  # imported at start-up from PYTHONPATH; prints at exit
[ -d /tmp/l8b ] || python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b > /dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$R/gpu.txt"

peer() {
  OUT=/tmp/peer STEPS=${PEER_STEPS:-30} TAG=-$1 timeout 240 python3 .whl/peer_bs2.py unsloth 2>&1 \
    | grep -E "^unsloth|Error|GCSTATS" | tail -3
  cp "/tmp/peer/unsloth-$1.json" "$R/"
}

kotune() {
  local tag=$1 lever=${LEVER:-unsloth-fused-embcpu} setting; shift
  for setting in "$@"; do [[ $setting == LEVER=* ]] && lever=${setting#LEVER=}; done  # k1+LEVER=...: this run's
  # The run's own settings last, so that +STEPS=12+LOGGING=2 overrides KOTUNE_STEPS and KOTUNE_LOGGING for it.
  env OUT="/tmp/k-$tag" TAG="-$tag" DATA=full GPU_TESTS=0 STEPS="${KOTUNE_STEPS:-50}" \
    LOGGING="${KOTUNE_LOGGING:-10}" RUNS="$lever" "$@" bash bench/gpu_backends.sh 2>&1 \
    | grep -v "^|" | tail -3
  grep -h GCSTATS /tmp/k-"$tag"/log_*.txt
  cp /tmp/k-"$tag"/kotune_*.json /tmp/k-"$tag"/steps_*.csv "$R/"
  cp /tmp/k-"$tag"/host_*.txt "$R/" 2>/dev/null || true  # with +HOST_LOAD=1: the run's CPU use by thread
}

for run in ${SEQ:?SEQ names the runs, e.g. SEQ=\"peer-first k1 peer-last k2\"}; do
  IFS=+ read -r -a parts <<< "$run"
  case ${parts[0]} in
    peer-*) peer "${parts[0]#peer-}" ;;
    *) kotune "${parts[@]}" ;;
  esac
done
python3 bench/summarize.py "$R" | tee "$R/table.md"
