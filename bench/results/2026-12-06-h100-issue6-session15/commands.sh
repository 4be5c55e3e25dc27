# Session 15 (2026-12-06), calls 66-67, on the GPU device from the repo root with .whl/ set up as bench/README.md says
# (plus pytest, pluggy and iniconfig wheels in .whl/ for the GPU tests).

# call 66: the GPU tests of train.lm_head_grad_in_forward, then full length: graph + head, Unsloth, graph (TRL's head)
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_head_grad_in_forward.py \
  "tests/test_cuda_graph_step.py::test_a_real_graph_replays_and_trains_like_steps_without_it"
OUT=/tmp/r KOTUNE_STEPS=30 PEER_STEPS=30 SEQ="h1+LEVER=tf-full-graph-head peer-a g1+LEVER=tf-full-graph" \
  bash bench/gpu_vs_unsloth.sh

# call 67, the same warm machine: the profile of the graph step with the new head, then Unsloth, head again
OUT=/tmp/r7 DATA=full GPU_TESTS=0 RUNS=" " PROFILE=tf-full-graph-head bash bench/gpu_backends.sh
OUT=/tmp/r7 KOTUNE_STEPS=30 PEER_STEPS=30 SEQ="peer-b h2+LEVER=tf-full-graph-head" bash bench/gpu_vs_unsloth.sh
