# session 12, call 58: UNSLOTH_GC_PREFETCH=1 (Unsloth's opt-in reload of the next offloaded checkpoint) vs plain, against Unsloth's loop
set -uo pipefail
R=$OUT; source bench/device_env.sh
cat > /tmp/site/sitecustomize.py <<'PY'
import atexit, sys
def _stats():
    m = sys.modules.get("unsloth_zoo.gradient_checkpointing")
    if m is not None:
        print("GCSTATS prefetch", m.GC_PREFETCH, m.GC_PREFETCH_STATS, "double_buffer", m.USE_DOUBLE_BUFFER, file=sys.stderr, flush=True)
atexit.register(_stats)
PY
[ -d /tmp/l8b ] || python3 bench/llama8b.py --tokenizer /tmp/tok --out /tmp/l8b > /dev/null 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $R/gpu.txt
mkdir -p /tmp/pr
peer() { OUT=/tmp/pr STEPS=30 TAG=-$1 timeout 200 python3 .whl/peer_bs2.py unsloth 2>&1 | grep -E "^unsloth|Error|GCSTATS" | tail -3; cp /tmp/pr/unsloth-$1.json $R/; }
kot() { local tag=$1; shift; env "$@" OUT=/tmp/k$tag TAG=-$tag DATA=full GPU_TESTS=0 STEPS=${KSTEPS:-50} LOGGING=10 RUNS=unsloth-fused-embcpu bash bench/gpu_backends.sh 2>&1 | grep -v "^|" | tail -3; grep GCSTATS /tmp/k$tag/log_*.txt; cp /tmp/k$tag/kotune_*.json /tmp/k$tag/steps_*.csv $R/; }
for step in ${SEQ}; do
  case $step in
    peer*) peer ${step#peer-} ;;
    pf*) kot $step UNSLOTH_GC_PREFETCH=1 ;;
    plain*) kot $step UNSLOTH_GC_PREFETCH=0 ;;
  esac
done
