# Session 14 (2026-12-06), calls 63-65, on the GPU device from the repo root with .whl/ set up as bench/README.md says
# (plus pytest, pluggy and iniconfig wheels in .whl/ for the GPU tests).

# call 63: the first train.cuda_graph_step (gradients allocated before the capture), Unsloth, the same levers without it
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_graph_step.py
OUT=/tmp/r KOTUNE_STEPS=40 PEER_STEPS=30 SEQ="g1+LEVER=tf-full-graph peer-a k1+LEVER=tf-varlen-fused-compile-embcpu" \
  bash bench/gpu_vs_unsloth.sh

# call 64: the two-graph cuda_graph_step (gradients made in the graph's pool) and fuse_lora_output
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_graph_step.py tests/test_lora_addmm.py
OUT=/tmp/r KOTUNE_STEPS=30 PEER_STEPS=30 SEQ="g1+LEVER=tf-full-graph peer-a f1+LEVER=tf-full-graph-fused" \
  bash bench/gpu_vs_unsloth.sh

# call 65, the same warm machine: Unsloth again, then the graph again
OUT=/tmp/r6 KOTUNE_STEPS=30 PEER_STEPS=30 SEQ="peer-b g2+LEVER=tf-full-graph" bash bench/gpu_vs_unsloth.sh
