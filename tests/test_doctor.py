"""kotune doctor: verdicts on faked machines, the exit status, and a real probe that never shows a token."""

from dataclasses import replace

import pytest

from kotune import cli, doctor, machine
from kotune.config import Params
from kotune.fit import Gpu
from kotune.memory import GiB
from kotune.model_shapes import LLAMA_3_8B
from kotune.presets import compose, compose_to

from .conftest import ROOT

pytestmark = pytest.mark.unit
CONF = ROOT / "conf"
A100 = Gpu("NVIDIA A100-SXM4-80GB", 80 * GiB, (8, 0), True)
T4 = Gpu("Tesla T4", 15 * GiB, (7, 5), False)
LOCK = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "trl": "1.16.0", "datasets": "5.2.0",
        "accelerate": "1.15.0", "bitsandbytes": "0.50.2"}
HEALTHY = machine.Environment(
    python=(3, 11, 7), installed={**LOCK, "torch": "2.13.0+cu130", "liger-kernel": "0.8.5"}, cuda="13.0", gpu=A100,
    bitsandbytes="CUDA", kernels={"liger-kernel": None, "unsloth": "not installed"},
    disk_free={"hf cache": ("/hf", 500 * GiB), "dvc cache": (".dvc/cache", 500 * GiB)},
    hf_token="HF_TOKEN", model_local=False, dvc_remotes=("storage",), git_changes=0,
)


@pytest.fixture(scope="module")
def gpu_params() -> Params:
    return compose(["model=llama-3-8b", "train=qlora-24gb"], CONF)


def verdicts(params, env, lock=LOCK, shape=LLAMA_3_8B) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(params, env, lock, shape)}


def failed(params, env, **kwargs) -> set[str]:
    return {name for name, c in verdicts(params, env, **kwargs).items() if c.verdict == doctor.FAIL}


def test_a_healthy_gpu_machine_meets_the_24gb_preset(gpu_params):
    checks = verdicts(gpu_params, HEALTHY)
    assert not failed(gpu_params, HEALTHY)
    assert checks["packages"].verdict == doctor.OK  # the +cu130 build label is the locked release
    assert checks["memory"].verdict == doctor.OK and "predicted" in checks["memory"].detail
    assert "A100" in checks["gpu"].detail and "bf16 yes" in checks["gpu"].detail


def test_a_t4_cannot_run_bf16_or_flash_attention_presets(gpu_params):
    t4 = replace(HEALTHY, gpu=T4)
    # The preset spends a 24 GB card's spare memory on 12 layers not recomputed (about 20 GiB): not on 15 GiB.
    assert failed(gpu_params, t4) == {"precision", "attention", "memory"}
    assert "train.layers_not_recomputed 12 -> " in verdicts(gpu_params, t4)["memory"].detail
    recomputed = replace(gpu_params, train=replace(gpu_params.train, layers_not_recomputed=0))
    assert failed(recomputed, t4) == {"precision", "attention"}
    checks = verdicts(gpu_params, t4)
    assert "fp16" in checks["precision"].detail and "8.0" in checks["attention"].detail
    # The same preset with auto dtypes and SDPA: fp16 on a T4 is a fallback, not a failure.
    portable = replace(gpu_params, model=replace(gpu_params.model, torch_dtype="auto", attn_implementation="sdpa"),
                       quant=replace(gpu_params.quant, bnb_4bit_compute_dtype="auto"))
    assert "precision" not in failed(portable, t4) and "fp16" in verdicts(portable, t4)["precision"].detail


def test_no_cuda_fails_params_that_need_it_and_warns_the_default(gpu_params):
    cpu_only = replace(HEALTHY, gpu=None, cuda=None, bitsandbytes="CPU")
    assert "cuda" in failed(gpu_params, cpu_only)  # train.device: cuda
    default = Params()
    assert not failed(default, cpu_only)
    assert verdicts(default, cpu_only)["cuda"].verdict == doctor.WARN  # auto: runs, slowly, on the CPU
    liger_on_cpu = replace(default, train=replace(default.train, use_liger_kernel=True))
    assert "use_liger_kernel" in verdicts(liger_on_cpu, cpu_only)["cuda"].detail


def test_each_missing_requirement_is_named(gpu_params):
    push = replace(gpu_params, publish=replace(gpu_params.publish, push=True))
    assert failed(push, replace(HEALTHY, hf_token=None)) == {"hf token"}
    assert "hf token" not in failed(push, HEALTHY)
    liger = replace(gpu_params, train=replace(gpu_params.train, use_liger_kernel=True))
    assert failed(liger, replace(HEALTHY, kernels={"liger-kernel": "not installed", "unsloth": None})) \
        == {"liger-kernel"}
    assert failed(gpu_params, replace(HEALTHY, bitsandbytes="CPU")) == {"bitsandbytes"}
    assert failed(gpu_params, replace(HEALTHY, disk_free={**HEALTHY.disk_free, "dvc cache": ("/d", 5 * GiB)})) \
        == {"disk: dvc cache"}
    long = compose(["model=llama-3-8b", "train=qlora-long-80gb"], CONF)
    assert failed(long, replace(HEALTHY, gpu=replace(A100, total_bytes=24 * GiB))) == {"memory"}
    missing_torch = {k: v for k, v in HEALTHY.installed.items() if k != "torch"}
    assert "packages" in failed(gpu_params, replace(HEALTHY, installed=missing_torch))


def test_warnings_do_not_fail(gpu_params):
    untidy = replace(HEALTHY, dvc_remotes=(), git_changes=3, installed={**HEALTHY.installed, "trl": "1.15.0"})
    checks = verdicts(gpu_params, untidy)
    assert not failed(gpu_params, untidy)
    assert {checks[n].verdict for n in ("dvc remote", "git", "packages")} == {doctor.WARN}
    assert "trl 1.15.0 (locked 1.16.0)" in checks["packages"].detail


def test_exit_status_is_2_only_when_a_requirement_is_not_met(tmp_path, monkeypatch, capsys):
    params = tmp_path / "params.yaml"
    compose_to(params, ["model=llama-3-8b", "train=qlora-24gb"], CONF)
    lock = tmp_path / "requirements.lock"
    lock.write_text("# the lock\n" + "".join(f"{name}=={version}\n" for name, version in LOCK.items()))
    monkeypatch.setattr(machine, "probe", lambda params: HEALTHY)
    assert cli.main(["doctor", "--params", str(params), "--lock", str(lock)]) == 0
    assert "can run here" in capsys.readouterr().out
    monkeypatch.setattr(machine, "probe", lambda params: replace(HEALTHY, gpu=T4))
    assert cli.main(["doctor", "--params", str(params), "--lock", str(lock)]) == 2
    captured = capsys.readouterr()
    assert "precision" in captured.out and "requirement(s)" in captured.err and "precision" in captured.err


def test_the_real_probe_names_a_token_source_but_never_the_token(monkeypatch, capsys):
    token = "hf_" + "Zy9Xw8Vu7T" * 3
    monkeypatch.setenv("HF_TOKEN", token)
    env = machine.probe(Params())
    assert env.hf_token == "HF_TOKEN" and env.python[0] == 3 and "torch" in env.installed
    assert env.disk_free["hf cache"][1] > 0
    push = replace(Params(), publish=replace(Params().publish, push=True))
    table = doctor.render(doctor.run_checks(push, env, doctor.read_lock(ROOT / "requirements.lock"), None))
    assert token not in table and "hf token" in table and "present (HF_TOKEN" in table
