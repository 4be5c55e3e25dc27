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

# call 68, another host: Unsloth, graph + head (+ the embedding-output lever, since reverted), the same at the
# commit before (BASE=.whl/base from `git archive <commit> src params.yaml`), qlora-24gb-full's 8 micro-batches, Unsloth
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu \
  "tests/test_cuda_graph_step.py::test_a_real_graph_replays_and_trains_like_steps_without_it[head-grad-in-forward]"
OUT=/tmp/r8 KOTUNE_STEPS=30 PEER_STEPS=30 \
  SEQ="peer-c h3+LEVER=tf-full-graph-head b3+LEVER=tf-full-graph-head+BASE=.whl/base a1+LEVER=tf-full-graph-head-ga8+STEPS=12+LOGGING=2 peer-d" \
  bash bench/gpu_vs_unsloth.sh

# call 69, the same warm machine: the host syncs of three steps without a logging step
SYNC_TRACE=1 LOGGING=10 OUT=/tmp/r9 DATA=full GPU_TESTS=0 RUNS=" " PROFILE=tf-full-graph-head bash bench/gpu_backends.sh

# call 70 (not run: the session's device time ran out): the non-blocking batch copy against the commit before it
OUT=$OUT KOTUNE_STEPS=20 SEQ="n1+LEVER=tf-full-graph-head" bash bench/gpu_vs_unsloth.sh
OUT=$OUT KOTUNE_STEPS=20 SEQ="b4+LEVER=tf-full-graph-head+BASE=.whl/base" bash bench/gpu_vs_unsloth.sh
