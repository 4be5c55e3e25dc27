# session 14, call 63: train.cuda_graph_step on full-length rows, against the same levers without it and Unsloth's loop
set -uo pipefail
source bench/device_env.sh
mkdir -p /tmp/r
{ nproc; lscpu | grep -E "Model name|Thread\(s\) per core|^CPU\(s\)"; } > /tmp/r/host.txt
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_graph_step.py > /tmp/r/gpu_test.txt 2>&1
tail -4 /tmp/r/gpu_test.txt
OUT=/tmp/r KOTUNE_STEPS=40 PEER_STEPS=30 SEQ="g1+LEVER=tf-full-graph peer-a k1+LEVER=tf-varlen-fused-compile-embcpu" \
  timeout 420 bash bench/gpu_vs_unsloth.sh
cp /tmp/k-*/log_*.txt /tmp/r/ 2>/dev/null
tar czf "$OUT/call63.tgz" -C /tmp/r .
