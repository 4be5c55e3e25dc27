"""kotune fit: the estimate's components on known shapes, the params mapping, the measured-peak bar, the CLI."""

import importlib.util
import json
import logging
import sys
from dataclasses import replace

import pytest

from kotune import cli, fit
from kotune.config import ModelSection, TinyModelSection
from kotune.errors import KotuneError
from kotune.memory import GiB, Workload, estimate, lora_params, quantized_weight_bytes
from kotune.model_shapes import KNOWN_SHAPES, LLAMA_3_8B, resolve_shape, shape_from_config
from kotune.presets import compose, compose_to

from .conftest import ROOT

pytestmark = pytest.mark.unit
CONF = ROOT / "conf"
GPU_24 = fit.Gpu("RTX 4090", 24 * GiB, (8, 9), True)


def load_validation():
    """bench/fit_validation.py: the measured peaks the estimator is held to."""
    spec = importlib.util.spec_from_file_location("fit_validation", ROOT / "bench" / "fit_validation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fit_validation"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def presets():
    return {name: compose(["model=llama-3-8b", f"train={name}"], CONF)
            for name in ("qlora-24gb", "qlora-24gb-unsloth", "qlora-24gb-full", "qlora-80gb", "qlora-long-80gb")}


def test_llama3_8b_weights_in_4bit_with_double_quant_are_5_7_gb():
    workload = Workload(1, 1)
    layers = quantized_weight_bytes(LLAMA_3_8B, workload)
    # 6,979,321,856 projection weights at 4 bits + one uint8 absmax per 64 + one fp32 per 256 absmax
    assert layers == pytest.approx(3_600_416_768, rel=1e-6)
    total = layers + LLAMA_3_8B.dense_params * 2  # + embeddings and LM head in bf16 (2 x 525,336,576)
    assert total == pytest.approx(5.70e9, rel=0.01)
    # Without double quantization the absmax values stay fp32: ~0.37 bits per weight more.
    single = quantized_weight_bytes(LLAMA_3_8B, replace(workload, double_quant=False))
    assert (single - layers) * 8 / LLAMA_3_8B.linear_params == pytest.approx(0.375, abs=0.01)


def test_lora_parameter_counts_on_known_shapes():
    assert lora_params(LLAMA_3_8B, Workload(1, 1, lora_r=16)) == 41_943_040  # all 7 projections
    assert lora_params(LLAMA_3_8B, Workload(1, 1, lora_r=64)) == 167_772_160
    # r8 on q and v only: 8 x ((4096 + 4096) + (4096 + 1024)) x 32 layers
    assert lora_params(LLAMA_3_8B, Workload(1, 1, lora_r=8, lora_targets=("q_proj", "v_proj"))) == 3_407_872


def test_70b_in_4bit_fits_one_80gb_gpu_at_2048_tokens():
    workload = Workload(1, 2048, attention="varlen", layer_kernels="compiled")
    needed = fit.needed_bytes(estimate(KNOWN_SHAPES["meta-llama/Meta-Llama-3-70B"], workload))
    assert 37 * GiB < needed < 80 * GiB  # 4-bit layers + 16-bit embeddings and head alone: 36.8 GiB


def test_levers_move_the_estimate_the_way_the_physics_says():
    base = Workload(2, 2048, attention="varlen")
    peak = estimate(LLAMA_3_8B, base).allocated

    def of(**changes):
        return estimate(LLAMA_3_8B, replace(base, **changes)).allocated

    assert of(checkpoint_every_n_layers=2) > peak + 8 * GiB  # 16 layers kept whole
    assert of(offload_checkpoints=True) < peak - 0.9 * GiB  # 32 layer inputs of 4096 tokens x 8 KiB
    assert peak - of(embeddings_on_cpu=True) == 128_256 * 4096 * 2  # Llama 3's input table, bf16
    tied = replace(LLAMA_3_8B, tie_word_embeddings=True)
    assert estimate(tied, replace(base, embeddings_on_cpu=True)).allocated == estimate(tied, base).allocated
    # 7 attention outputs of 4096 tokens x 4096 x 2 bytes + 32 fp32 log-sum-exps: 7 x 32.5 MiB
    assert of(saved_attention_layers=7) - peak == 7 * 4096 * (4096 * 2 + 32 * 4)
    assert of(layer_kernels="liger") < peak
    assert of(checkpointing=False) > of(checkpoint_every_n_layers=2)
    # SDPA's math kernel materializes (batch, heads, seq, seq) scores: quadratic in the length.
    math = Workload(1, 4096, attention="math")
    growth = (estimate(LLAMA_3_8B, replace(math, seq_len=8192)).allocated - estimate(LLAMA_3_8B, math).allocated)
    assert growth > 3 * 32 * 4096**2 * 4 * 3  # at least 3 x the scores' growth


def test_the_last_layers_kept_cost_what_every_other_layer_kept_costs():
    """16 of 32 layers kept whole, the last layer among them, either way: the estimate that matched every other
    layer's measured peak (-0.0%, bench/results/2026-11-24-fit-validation.md) covers layers_not_recomputed."""
    base = Workload(2, 2048, attention="varlen", layer_kernels="compiled")
    every_other = estimate(LLAMA_3_8B, replace(base, checkpoint_every_n_layers=2))
    last_half = estimate(LLAMA_3_8B, replace(base, layers_not_recomputed=16))
    assert last_half.parts == every_other.parts and last_half.peak_at == every_other.peak_at
    costs = [estimate(LLAMA_3_8B, replace(base, layers_not_recomputed=k)).allocated for k in range(0, 33)]
    assert costs == sorted(costs) and costs[-1] > costs[0] + 12 * GiB  # about 0.47 GiB a layer here
    assert estimate(LLAMA_3_8B, replace(base, layers_not_recomputed=32)).allocated == pytest.approx(
        estimate(LLAMA_3_8B, replace(base, checkpointing=False)).allocated)


def test_the_most_layers_not_recomputed_that_fit(presets):
    workload = fit.workload_from_params(presets["qlora-24gb"], LLAMA_3_8B, GPU_24)
    total = GPU_24.total_bytes
    kept = fit.most_layers_not_recomputed(LLAMA_3_8B, workload, total)
    assert 0 < kept < LLAMA_3_8B.num_hidden_layers
    assert fit.fits(LLAMA_3_8B, replace(workload, layers_not_recomputed=kept), total)
    assert not fit.fits(LLAMA_3_8B, replace(workload, layers_not_recomputed=kept + 1), total)
    # where the option does not apply: every other layer, offloaded checkpoints (Unsloth's, TRL's)
    assert fit.most_layers_not_recomputed(LLAMA_3_8B, replace(workload, checkpoint_every_n_layers=2), total) is None
    lean = fit.workload_from_params(presets["qlora-24gb-unsloth"], LLAMA_3_8B, GPU_24)
    assert fit.most_layers_not_recomputed(LLAMA_3_8B, lean, total) is None
    kept_params = replace(presets["qlora-24gb"], train=replace(presets["qlora-24gb"].train, layers_not_recomputed=5))
    assert fit.workload_from_params(kept_params, LLAMA_3_8B, GPU_24).layers_not_recomputed == 5


def test_each_gpu_preset_fits_the_card_its_name_promises(presets):
    # What a 24 GB card has for CUDA (an A10G or L4: about 22.5 GiB) and an H100 80GB (79.2 GiB). qlora-24gb spends
    # the spare memory on layers not recomputed: a preset edit that spends more must fail here, not on a GPU.
    a10g, h100 = fit.Gpu("A10G", int(22.5 * GiB), (8, 6), True), fit.Gpu("H100", int(79.2 * GiB), (9, 0), True)
    cards = {"qlora-24gb": a10g, "qlora-24gb-unsloth": a10g, "qlora-24gb-full": a10g, "qlora-80gb": h100,
             "qlora-long-80gb": h100}
    for name, card in cards.items():
        assert fit.fits(LLAMA_3_8B, fit.workload_from_params(presets[name], LLAMA_3_8B, card), card.total_bytes), name
    small = fit.workload_from_params(presets["qlora-24gb"], LLAMA_3_8B, a10g)
    assert small.layers_not_recomputed > 0
    assert not fit.fits(LLAMA_3_8B, replace(small, layers_not_recomputed=small.layers_not_recomputed + 8),
                        a10g.total_bytes)


def test_estimates_are_within_15_percent_of_the_measured_peaks():
    validation = load_validation()
    checked = 0
    for row in validation.ROWS:
        got = estimate(LLAMA_3_8B, validation.workload_of(row)).allocated / GiB
        if row.measured_gib is None:  # out of memory on 80 GB: predicted so
            assert got > 80, row.name
        elif row.acceptance:
            assert got == pytest.approx(row.measured_gib, rel=0.15), row.name
            checked += 1
    assert checked >= 8  # the three seed shapes and the GPU presets


def test_params_map_to_what_the_train_stage_runs(presets):
    shape = LLAMA_3_8B
    small = fit.workload_from_params(presets["qlora-24gb"], shape, GPU_24)
    assert (small.micro_batch, small.seq_len, small.attention, small.layer_kernels) == (2, 2048, "varlen", "compiled")
    assert small.gradients_held and small.lora_dropout and small.optimizer_bytes == 4 and small.lora_bytes == 2
    lean = fit.workload_from_params(presets["qlora-24gb-unsloth"], shape, GPU_24)
    assert lean.embeddings_on_cpu and lean.offload_checkpoints and lean.attention == "flash"  # Unsloth's own
    assert estimate(shape, lean).allocated < estimate(shape, small).allocated
    big = fit.workload_from_params(presets["qlora-80gb"], shape, GPU_24)
    assert big.checkpoint_every_n_layers == 2 and big.lora_r == 64
    long = fit.workload_from_params(presets["qlora-long-80gb"], shape, GPU_24)
    assert long.offload_checkpoints and long.attention == "flash"  # whole rows go to SDPA
    # SDPA on a pre-Ampere GPU with grouped-query heads and no mask falls back to the math kernel.
    t4 = fit.Gpu("Tesla T4", 15 * GiB, (7, 5), False)
    unpacked = replace(presets["qlora-24gb"], train=replace(presets["qlora-24gb"].train, packing=False,
                                                            per_device_train_batch_size=1),
                       model=replace(presets["qlora-24gb"].model, attn_implementation="sdpa"))
    assert fit.workload_from_params(unpacked, shape, t4).attention == "math"
    assert fit.workload_from_params(unpacked, shape, GPU_24).attention == "flash"


def test_suggestions_are_the_largest_that_fit(presets):
    workload = fit.workload_from_params(presets["qlora-long-80gb"], LLAMA_3_8B, GPU_24)
    assert not fit.fits(LLAMA_3_8B, workload, GPU_24.total_bytes)
    length = fit.largest(LLAMA_3_8B, workload, GPU_24.total_bytes, "seq_len")
    assert length % fit.LENGTH_STEP == 0
    assert fit.fits(LLAMA_3_8B, replace(workload, seq_len=length), GPU_24.total_bytes)
    assert not fit.fits(LLAMA_3_8B, replace(workload, seq_len=length + fit.LENGTH_STEP), GPU_24.total_bytes)
    batch = fit.largest(LLAMA_3_8B, replace(workload, seq_len=2048), GPU_24.total_bytes, "micro_batch")
    assert fit.fits(LLAMA_3_8B, replace(workload, seq_len=2048, micro_batch=batch), GPU_24.total_bytes)
    assert not fit.fits(LLAMA_3_8B, replace(workload, seq_len=2048, micro_batch=batch + 1), GPU_24.total_bytes)


def test_fit_command_says_fits_or_exits_2_with_the_breakdown(tmp_path, capsys):
    small, long = tmp_path / "small.yaml", tmp_path / "long.yaml"
    compose_to(small, ["model=llama-3-8b", "train=qlora-24gb"], CONF)
    compose_to(long, ["model=llama-3-8b", "train=qlora-long-80gb"], CONF)
    assert cli.main(["fit", "--params", str(small), "--gpu-mem", "24GiB"]) == 0
    out = capsys.readouterr().out
    assert "4-bit weights + quantization constants" in out and "41,943,040" in out and "fits" in out
    assert cli.main(["fit", "--params", str(long), "--gpu-mem", "24GiB"]) == 2
    captured = capsys.readouterr()
    assert "OUT OF MEMORY" in captured.out and "largest max_length at micro-batch 1" in captured.out
    assert "predicted out of GPU memory" in captured.err


def test_gpu_memory_sizes_parse():
    assert fit.parse_size("24GiB") == 24 * GiB
    assert fit.parse_size("24GB") == 24 * 10**9
    assert fit.parse_size("80g") == fit.parse_size("80") == 80 * GiB
    with pytest.raises(Exception, match="not a memory size"):
        fit.parse_size("lots")


def test_shapes_come_from_a_config_folder_the_table_or_the_tiny_params(tmp_path, monkeypatch):
    config = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32}  # Llama-2-7B: no num_key_value_heads means one per query head
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape, _ = resolve_shape(ModelSection(name_or_path=str(tmp_path)), TinyModelSection())
    assert (shape.num_key_value_heads, shape.head_dim) == (32, 128)
    assert resolve_shape(ModelSection(name_or_path="meta-llama/Llama-3.1-8B"), TinyModelSection())[0] == LLAMA_3_8B
    monkeypatch.chdir(tmp_path)  # models/tiny-ko not built yet: the tiny_model params describe it
    tiny, source = resolve_shape(ModelSection(), TinyModelSection())
    assert tiny.vocab_size == 4096 + 256 and "tiny_model" in source
    with pytest.raises(KotuneError, match="--config"):
        resolve_shape(ModelSection(name_or_path="someone/unknown-model"), TinyModelSection())
    with pytest.raises(KotuneError, match="mixture-of-experts"):
        shape_from_config({**config, "num_local_experts": 8}, "mixtral")


def test_train_start_up_warns_before_loading_when_it_will_not_fit(presets, monkeypatch, caplog):
    monkeypatch.setattr(fit, "detect_gpu", lambda: GPU_24)
    with caplog.at_level(logging.INFO, logger="kotune.fit"):
        fit.warn_if_it_will_not_fit(presets["qlora-long-80gb"], "cuda")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "out of GPU memory" in warnings[0].getMessage()
    assert "largest max_length" in warnings[0].getMessage()
    caplog.clear()
    fit.warn_if_it_will_not_fit(presets["qlora-24gb"], "cuda")
    fit.warn_if_it_will_not_fit(presets["qlora-long-80gb"], "cpu")  # nothing to compare on the CPU
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_train_stage_runs_the_estimate_before_loading(tmp_path, tiny_model_dir, processed, monkeypatch):
    from kotune.stages import train

    from .conftest import DATA, FAST, params_file, stage_args

    class Estimated(Exception):
        pass

    def estimated(params, device):
        raise Estimated(device)

    def loaded(*args, **kwargs):
        raise AssertionError("the model loaded before the memory estimate")

    monkeypatch.setattr(train, "warn_if_it_will_not_fit", estimated)
    monkeypatch.setattr(train, "load_base_model", loaded)
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train=FAST)
    with pytest.raises(Estimated):
        train.main(stage_args(tmp_path, params, processed))


def test_a_suggested_length_past_the_models_positions_says_so():
    from kotune.model_shapes import tiny_shape

    shape = tiny_shape(TinyModelSection())  # trained to 1,024 positions
    _, lines = fit.verdict(shape, Workload(micro_batch=1, seq_len=512), fit.Gpu("test", 24 * GiB), "given")
    assert "trained to 1,024 positions" in next(line for line in lines if "largest max_length" in line)
