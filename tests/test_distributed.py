"""Several processes: params checks, the `accelerate launch` command, the accelerate configs, and one real
2-process DDP run (gloo, on the CPU) of `kotune train`, stopped by SIGTERM and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kotune import distributed
from kotune.checkpoints import MARKER
from kotune.config import Params, TrainSection, params_from_dict
from kotune.errors import ConfigError, KotuneError
from kotune.typed_config import to_dict

from .conftest import DATA, FAST, ROOT, params_file, stage_args
from .test_faults import complete_checkpoints, csv_steps, event_steps

pytestmark = pytest.mark.unit
FSDP_QUANT = {"bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "bfloat16"}


def params_with(**sections) -> Params:
    values = to_dict(Params())
    for name, changes in sections.items():
        values[name].update(changes)
    return params_from_dict(values)


def test_fsdp_qlora_composes_with_bfloat16_storage():
    params = params_with(train={"num_processes": 2, "distributed": "fsdp-qlora"}, quant=FSDP_QUANT)
    assert params.train.distributed == "fsdp-qlora"


@pytest.mark.parametrize("sections, message", [
    ({"train": {"distributed": "fsdp-qlora"}},
     r"quant.bnb_4bit_quant_storage \(uint8\) equal to quant.bnb_4bit_compute_dtype \(auto\)"),
    ({"train": {"distributed": "fsdp-qlora"}, "quant": {**FSDP_QUANT, "bnb_4bit_quant_storage": "float32"}},
     "quant.bnb_4bit_quant_storage .* quant.bnb_4bit_compute_dtype"),
    ({"train": {"distributed": "fsdp-qlora"}, "quant": FSDP_QUANT, "model": {"torch_dtype": "float32"}},
     "model.torch_dtype"),
    ({"train": {"distributed": "fsdp-qlora", "optim": "paged_adamw_8bit"}, "quant": FSDP_QUANT}, "8-bit"),
    ({"train": {"distributed": "fsdp-qlora", "compile_layers": True}, "quant": FSDP_QUANT}, "use_orig_params"),
    ({"train": {"num_processes": 0}}, "num_processes must be >= 1"),
    ({"train": {"num_processes": 2, "backend": "unsloth"}}, "Unsloth's open-source build trains on one GPU"),
    ({"train": {"distributed": "deepspeed"}}, "distributed"),
])
def test_incompatible_levers_are_refused(sections, message):
    with pytest.raises(ConfigError, match=message):
        params_with(**sections)


def test_the_fsdp_preset_composes_with_an_8b_model():
    from kotune.presets import compose

    params = compose(["model=llama-3.1-8b", "train=qlora-fsdp-2gpu"], ROOT / "conf")
    assert params.train.distributed == "fsdp-qlora" and params.train.num_processes == 2
    assert params.quant.bnb_4bit_quant_storage == params.quant.bnb_4bit_compute_dtype == "bfloat16"


def test_the_launch_command_runs_the_same_stage_under_accelerate(monkeypatch):
    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)
    train = TrainSection(num_processes=4)
    args = ["--params", "p.yaml", "--data", "data/processed"]
    assert distributed.should_launch(train) and not distributed.should_launch(TrainSection())
    assert distributed.launch_command(train, args) == [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "conf/accelerate/ddp.yaml",
        "--num_processes", "4", "-m", "kotune", "train", *args]
    fsdp = TrainSection(num_processes=2, distributed="fsdp-qlora")
    assert distributed.launch_command(fsdp, args)[4] == "conf/accelerate/fsdp-qlora.yaml"
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert not distributed.should_launch(train)  # a launched process trains; it does not launch again


def test_launched_processes_must_match_the_params(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(KotuneError, match="set train.num_processes: 2"):
        distributed.check(TrainSection(), "cpu")
    with pytest.raises(KotuneError, match="fsdp-qlora needs CUDA"):
        distributed.check(TrainSection(num_processes=2, distributed="fsdp-qlora"), "cpu")
    distributed.check(TrainSection(num_processes=2), "cpu")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # conf/accelerate/fsdp-qlora.yaml, with ddp in the params
    with pytest.raises(KotuneError, match="--config_file conf/accelerate/ddp.yaml"):
        distributed.check(TrainSection(num_processes=2), "cuda")


def test_the_accelerate_configs_load_as_accelerate_reads_them():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    ddp = load_config_from_file(str(ROOT / "conf" / "accelerate" / "ddp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.num_machines == 1
    fsdp = load_config_from_file(str(ROOT / "conf" / "accelerate" / "fsdp-qlora.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP
    settings = fsdp.fsdp_config
    assert settings["fsdp_sharding_strategy"] == "FULL_SHARD" and not settings["fsdp_use_orig_params"]
    assert settings["fsdp_cpu_ram_efficient_loading"] and settings["fsdp_sync_module_states"]
    assert settings["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert not settings["fsdp_activation_checkpointing"]  # the Trainer's checkpointing instead: both is an error


# 16 steps of 2 x 2 conversations (the single-process runs' batch of 4), a checkpoint every 4.
RUN = {**FAST, "max_steps": 16, "save_steps": 4, "eval_steps": 4, "per_device_train_batch_size": 2,
       "per_device_eval_batch_size": 2, "num_processes": 2}


def run_stage(work: Path, params: Path, data: Path, stop_after: int | None = None) -> tuple[int, str]:
    """`kotune train` as dvc runs it, from the repository root; SIGTERM once checkpoint-`stop_after` is marked."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    with open(work / "stderr.log", "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "kotune", "train", *stage_args(work, params, data)],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=True)
        deadline = time.time() + 300
        while stop_after and not (work / "checkpoints" / f"checkpoint-{stop_after}" / MARKER).exists():
            assert process.poll() is None and time.time() < deadline, (work / "stderr.log").read_text()
            time.sleep(0.05)
        if stop_after:
            process.send_signal(signal.SIGTERM)  # to the launching process only, as `docker stop` does
        try:
            status = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return status, (work / "stderr.log").read_text()


def test_two_processes_train_stop_and_resume_as_one(tmp_path, tiny_model_dir, processed):
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train=RUN)
    status, log = run_stage(tmp_path, params, processed, stop_after=4)
    assert status == 128 + signal.SIGTERM, log
    assert "accelerate launch --config_file conf/accelerate/ddp.yaml --num_processes 2 -m kotune train" in log
    stopped = complete_checkpoints(tmp_path)[-1]
    assert 4 < stopped < 16 and log.count(f"saved {tmp_path / 'checkpoints'}/checkpoint-{stopped};") == 1, log
    assert not (tmp_path / "adapter").exists()
    checkpoint = tmp_path / "checkpoints" / f"checkpoint-{stopped}"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}  # both ranks' parts

    status, log = run_stage(tmp_path, params, processed)
    assert status == 0, log
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["resumed_from_step"] == stopped and metrics["steps"] == 16 and metrics["processes"] == 2
    assert metrics["final_loss"] < metrics["first_loss"]
    assert len(list((tmp_path / "adapter").glob("*.safetensors"))) == 1
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2  # one a run: rank 0's
    assert event_steps(tmp_path / "tb", "train/loss") == list(range(1, 17))  # each step once, across both runs
    assert csv_steps(tmp_path / "plots" / "steps.csv") == list(range(1, 17))
    assert complete_checkpoints(tmp_path) == [8, 12, 16]
    assert log.count("kotune.train: done: 16 steps") == 1  # the other rank logs warnings only


def test_adapter_from_a_gathered_state_dict_loads_back_equal(tmp_path, tiny_model_dir):
    """FSDP's path (stages.train.save_gathered_adapter) writes what PEFT's loader reads, tensor for tensor."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from kotune.stages.train import check_adapter_saved, save_gathered_adapter

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    state = model.state_dict()  # FSDP's full state dict has these clean names
    save_gathered_adapter(model, state, tmp_path)
    check_adapter_saved(tmp_path)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path)
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert lora and all(torch.equal(loaded.state_dict()[k], v) for k, v in lora.items())


def test_an_adapter_file_without_lora_tensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    from kotune.errors import KotuneError
    from kotune.stages.train import check_adapter_saved

    save_file({}, tmp_path / "adapter_model.safetensors")
    with pytest.raises(KotuneError, match="holds no LoRA weights"):
        check_adapter_saved(tmp_path)
