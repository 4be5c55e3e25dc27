# Session 13's device calls (2026-12-06), one warm H100 host, each with carry [".whl"] (setup: bench/README.md).
# call 59 (394 s)
SEQ="peer-first pf1+UNSLOTH_GC_PREFETCH=1 plain1+UNSLOTH_GC_PREFETCH=0 peer-last" timeout 585 bash bench/gpu_vs_unsloth.sh
# call 60 (279 s)
GPU_TESTS=0 STEPS=60 LOGGING=10 RUNS="tf-varlen-fused-compile-keep12 tf-varlen-fused-compile" PEERS=packed \
  timeout 580 bash bench/gpu_backends.sh
# call 61 (380 s)
SEQ="k1 peer-a k2 peer-b" KOTUNE_LOGGING=1 PEER_STEPS=40 KOTUNE_STEPS=50 timeout 580 bash bench/gpu_vs_unsloth.sh
# call 62 (447 s)
SEQ="peer-c k3 peer-d k4" KOTUNE_LOGGING=1 PEER_STEPS=40 KOTUNE_STEPS=50 timeout 540 bash bench/gpu_vs_unsloth.sh
