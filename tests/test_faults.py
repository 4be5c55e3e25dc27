"""Faults in the train stage: SIGKILL at several points, SIGTERM and Ctrl-C, a full disk, out of memory.

The kills run the real stage (`kotune train`) in its own process group, paused at a chosen point by
HOOK, which lives here: the product has no test switch. Each rerun must resume from the last complete
checkpoint and end with the adapter and with every step logged once.
"""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kotune import atomic
from kotune.atomic import DiskFullError, atomic_dir, atomic_file, write_json
from kotune.checkpoints import MARKER, step_of
from kotune.config import Params
from kotune.errors import KotuneError
from kotune.stages import train

from .conftest import DATA, FAST, params_file, stage_args

pytestmark = pytest.mark.unit

# 12 steps, a checkpoint (and an eval) every 4: room to kill before, during and after one.
RUN = {**FAST, "max_steps": 12, "save_steps": 4, "eval_steps": 4}
STEPS, SAVES = list(range(1, 13)), [4, 8, 12]

# `kotune train`, paused at KOTUNE_TEST_PAUSE = "<where>:<step>" until the file KOTUNE_TEST_GO_ON exists:
#   step:N     after every callback's on_step_end of step N
#   writing:N  inside the save of checkpoint-N: its weights written, its optimizer state not yet
#   saved:N    after the Trainer has saved checkpoint-N, before on_save (kotune's completion marker)
# First it flushes TensorBoard, as its two-minute timer would have in a longer run, so the event files
# hold steps after the last checkpoint (those a resumed run logs again), and touches KOTUNE_TEST_PAUSED.
HOOK = """
import os, sys, time
from pathlib import Path
from transformers import Trainer
from transformers.trainer_callback import CallbackHandler
from kotune.cli import main

where, at = os.environ["KOTUNE_TEST_PAUSE"].split(":")

def pause(kind, step, callbacks):
    if kind != where or step != int(at):
        return
    for callback in callbacks:
        if getattr(callback, "tb_writer", None):
            callback.tb_writer.flush()
    Path(os.environ["KOTUNE_TEST_PAUSED"]).touch()
    while not Path(os.environ["KOTUNE_TEST_GO_ON"]).exists():
        time.sleep(0.05)

step_end, write_optimizer, save = (CallbackHandler.on_step_end, Trainer._save_optimizer_and_scheduler,
                                   Trainer._save_checkpoint)

def on_step_end(self, args, state, control):
    control = step_end(self, args, state, control)
    pause("step", state.global_step, self.callbacks)
    return control

def save_optimizer_and_scheduler(self, output_dir):
    pause("writing", self.state.global_step, self.callback_handler.callbacks)
    return write_optimizer(self, output_dir)

def save_checkpoint(self, model, trial):
    save(self, model, trial)
    pause("saved", self.state.global_step, self.callback_handler.callbacks)

CallbackHandler.on_step_end, Trainer._save_optimizer_and_scheduler = on_step_end, save_optimizer_and_scheduler
Trainer._save_checkpoint = save_checkpoint
sys.exit(main(sys.argv[1:]))
"""


def skip_without_private_mounts() -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged mount namespaces here (unshare -rm)")


def start_paused(work: Path, params: Path, data: Path, pause: str, wrapper: tuple = ()) -> subprocess.Popen:
    """The train stage in a new session (its own process group), paused at `pause`."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "KOTUNE_TEST_PAUSE": pause,
           "KOTUNE_TEST_PAUSED": str(work / "paused"), "KOTUNE_TEST_GO_ON": str(work / "go-on")}
    with open(work / "stderr.log", "wb") as stderr:
        # SIGINT as a terminal's foreground job has it: a shell starts background jobs with it ignored.
        return subprocess.Popen([*wrapper, sys.executable, "-c", HOOK, "train", *stage_args(work, params, data)],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until_paused(process: subprocess.Popen, work: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (work / "paused").exists():
        if process.poll() is not None or time.time() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the stage never paused (exit {process.poll()}):\n{(work / 'stderr.log').read_text()}")
        time.sleep(0.05)


def complete_checkpoints(work: Path) -> list[int]:
    return sorted(step_of(p) for p in (work / "checkpoints").glob("checkpoint-*") if (p / MARKER).exists())


def event_steps(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # purge_orphaned_data=False: read what the files hold, not what TensorBoard's reader would hide.
    events = EventAccumulator(str(folder), purge_orphaned_data=False)
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def csv_steps(path: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:]]


def assert_finished_and_logged_once(work: Path) -> None:
    """The adapter is there, and every step is logged exactly once, in order, in TensorBoard and the plots."""
    assert (work / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((work / "train.json").read_text())["steps"] == STEPS[-1]
    assert event_steps(work / "tb", "train/loss") == STEPS
    assert event_steps(work / "tb", "eval/loss") == SAVES
    assert csv_steps(work / "plots" / "steps.csv") == STEPS
    assert csv_steps(work / "plots" / "eval.csv") == SAVES
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")], "a temporary was left behind"


# SIGKILL cases: where the run is paused, train.save_total_limit, the complete checkpoints it leaves.
KILLS = {
    "before-the-first-checkpoint": ("step:2", 3, []),
    "mid-save": ("writing:8", 3, [4]),
    "saved-but-not-marked": ("saved:8", 1, [4]),  # with one kept, checkpoint-4 must outlive checkpoint-8's save
    "after-a-checkpoint": ("step:10", 3, [4, 8]),
}
SIGNALS = {"SIGTERM": signal.SIGTERM, "Ctrl-C": signal.SIGINT}  # sent while paused at step:5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, processed):
    """This file's stage runs, all started at once, each paused at its point: a run is mostly imports, so
    they overlap well. Case name -> (work folder, params file, process)."""
    pauses = {**{case: (pause, keep) for case, (pause, keep, _) in KILLS.items()},
              **{case: ("step:5", 3) for case in SIGNALS}}
    started = {}
    for case, (pause, keep) in pauses.items():
        work = tmp_path_factory.mktemp(case)
        params = params_file(work / "params.yaml", tiny_model_dir, data=DATA, train={**RUN, "save_total_limit": keep})
        started[case] = (work, params, start_paused(work, params, processed, pause))
    yield started
    for _, _, process in started.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("case", KILLS)
def test_a_killed_run_resumes_from_its_last_complete_checkpoint(runs, processed, caplog, case):
    work, params, process = runs[case]
    pause, _, complete = KILLS[case]
    wait_until_paused(process, work)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert complete_checkpoints(work) == complete
    assert not (work / "adapter").exists()

    caplog.set_level(logging.INFO)
    train.main(stage_args(work, params, processed))
    resumes_from = complete[-1] if complete else 0
    assert json.loads((work / "train.json").read_text())["resumed_from_step"] == resumes_from
    if resumes_from:
        assert f"resuming from {work / 'checkpoints' / f'checkpoint-{resumes_from}'}" in caplog.text
    else:
        assert "starting from step 0" in caplog.text
    if pause.startswith(("writing", "saved")):
        assert "checkpoint-8: incomplete" in caplog.text
    assert_finished_and_logged_once(work)


@pytest.mark.parametrize("case", SIGNALS)
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit(runs, processed, case):
    work, params, process = runs[case]
    wait_until_paused(process, work)
    os.killpg(process.pid, SIGNALS[case])
    (work / "go-on").touch()
    assert process.wait(timeout=120) == 128 + SIGNALS[case]  # as a shell reports a signal: DVC sees a failure
    log = (work / "stderr.log").read_text()
    assert f"saved {work / 'checkpoints'}/checkpoint-6; run the same command" in log, log
    assert "Traceback" not in log
    assert complete_checkpoints(work) == [4, 6] and not (work / "adapter").exists()

    train.main(stage_args(work, params, processed))
    assert json.loads((work / "train.json").read_text())["resumed_from_step"] == 6
    assert_finished_and_logged_once(work)


def test_a_full_disk_during_a_checkpoint_says_what_to_change(tmp_path, tiny_model_dir, processed, monkeypatch):
    from transformers import Trainer

    write_optimizer = Trainer._save_optimizer_and_scheduler

    def disk_fills_at_8(self, output_dir):
        if self.state.global_step == 8:
            (Path(output_dir) / "optimizer.pt").write_bytes(b"the first bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(output_dir) / "optimizer.pt"))
        return write_optimizer(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_fills_at_8)
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train=RUN)
    with pytest.raises(DiskFullError) as err:
        train.main(stage_args(tmp_path, params, processed))
    message = str(err.value)
    assert f"the disk is full: writing {tmp_path / 'checkpoints'} failed" in message
    assert "df -h" in message and "--checkpoints" in message and "train.save_total_limit (now 3)" in message
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("*checkpoint-*"))
    assert left == ["checkpoint-4"] and complete_checkpoints(tmp_path) == [4]  # the partial one is gone
    assert not (tmp_path / "adapter").exists()

    monkeypatch.undo()
    train.main(stage_args(tmp_path, params, processed))
    assert json.loads((tmp_path / "train.json").read_text())["resumed_from_step"] == 4


def test_a_really_full_disk_during_a_checkpoint(tmp_path, tiny_model_dir, processed, trained):
    """The checkpoints on a tmpfs (in a private mount namespace) with room for one and a half: the
    libraries' own errors (torch.save's is a bare short write) must come out as the same message."""
    skip_without_private_mounts()
    sizes = {p.name: -(-p.stat().st_size // 4096) * 4096 for p in (trained / "checkpoints" / "checkpoint-8").iterdir()}
    # The Trainer writes the weights and tokenizer first, then optimizer.pt: run out in the middle of that.
    later = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin", MARKER)
    room = sum(sizes.values()) + sum(v for k, v in sizes.items() if k not in later) + sizes["optimizer.pt"] // 2
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    # Mounted over the checkpoints folder in the namespace only; listed before the namespace goes.
    mount = (f'mount -t tmpfs -o size={room} tmpfs {folder} || exit 99; '
             f'"$@"; rc=$?; ls -R {folder} > {tmp_path / "ls"}; exit $rc')
    params = params_file(tmp_path / "params.yaml", tiny_model_dir, data=DATA, train=RUN)
    in_namespace = ("unshare", "-rm", "sh", "-c", mount, "sh")
    process = start_paused(tmp_path, params, processed, "nowhere:0", wrapper=in_namespace)
    if process.wait(timeout=240) == 99:
        pytest.skip("cannot mount a tmpfs in a private namespace here")
    log = (tmp_path / "stderr.log").read_text()
    assert process.returncode == 2, log
    assert f"the disk is full: writing {folder} failed" in log and "train.save_total_limit" in log
    assert "unexpected pos" in log  # torch.save's short write, which has no errno: the case this test is for
    listing = (tmp_path / "ls").read_text()
    assert "checkpoint-4" in listing and MARKER in listing and "checkpoint-8" not in listing, listing
    assert not (tmp_path / "adapter").exists()


def test_a_full_disk_leaves_an_output_as_it_was(tmp_path):
    out = tmp_path / "metrics" / "train.json"
    write_json(out, {"steps": 24})
    with pytest.raises(DiskFullError) as err, atomic_file(out) as handle:
        handle.write('{"steps": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert f"the disk is full: writing {out} failed" in str(err.value) and f"df -h {out.parent}" in str(err.value)
    assert json.loads(out.read_text()) == {"steps": 24} and os.listdir(out.parent) == ["train.json"]


def test_a_full_disk_inside_a_library_leaves_no_output_folder(tmp_path):
    from safetensors import SafetensorError

    out = tmp_path / "adapter"
    with pytest.raises(DiskFullError, match=f"writing {out} failed"), atomic_dir(out) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert not os.listdir(tmp_path)


def test_a_really_full_disk_under_an_atomic_write():
    """On a tmpfs of 64 KiB in a private mount namespace: what the OS raises, not a stand-in."""
    skip_without_private_mounts()
    script = "from kotune.atomic import write_json; write_json('/mnt/metrics.json', ['x' * 1000] * 1000)"
    run = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs /mnt || exit 99; "$@"',
                          "sh", sys.executable, "-c", script], capture_output=True, text=True)
    if run.returncode == 99:
        pytest.skip("cannot mount a tmpfs in a private namespace here")
    assert "DiskFullError: the disk is full: writing /mnt/metrics.json failed" in run.stderr, run.stderr


def test_a_killed_writers_leftovers_are_removed_on_the_next_write(tmp_path):
    out = tmp_path / "merged"
    (tmp_path / ".merged.k1ll3d_x.tmp").mkdir()  # atomic_dir's temporary, its process killed
    (tmp_path / ".merged.old").mkdir()  # killed between the two renames
    (tmp_path / ".merged.json.a1b2c3d4.tmp").write_text("")  # another output's: not ours to remove
    with atomic_dir(out) as tmp:
        (tmp / "model.safetensors").write_text("weights")
    assert sorted(os.listdir(tmp_path)) == [".merged.json.a1b2c3d4.tmp", "merged"]


def test_outputs_get_the_mode_open_gives(tmp_path):
    (tmp_path / "plain").write_text("")
    write_json(tmp_path / "metrics.json", {})
    with atomic_dir(tmp_path / "adapter"):
        pass
    assert (tmp_path / "metrics.json").stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o777 & ~atomic._umask()


class FailingTrainer:
    def __init__(self, error: Exception, output_dir: Path = Path("checkpoints")):
        self.error, self.args = error, SimpleNamespace(output_dir=str(output_dir))

    def train(self, resume_from_checkpoint=None):
        raise self.error


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
], ids=["torch-cpu-allocator", "python"])
def test_cpu_out_of_memory_says_what_to_lower(error):
    with pytest.raises(KotuneError) as err:
        train.run_training(FailingTrainer(error), None, Params())
    message = str(err.value)
    assert message.startswith("CPU (RAM) out of memory at micro-batch")
    assert "lower train.per_device_train_batch_size" in message and "train.device: cuda" in message


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        train.run_training(FailingTrainer(ValueError("a bug"), tmp_path), None, Params())


def test_logs_are_flushed_before_a_checkpoint_is_marked_complete(tmp_path):
    """A kill just after the marker is written must find TensorBoard holding every step the checkpoint holds."""
    from kotune.checkpoints import MarkComplete

    (tmp_path / "checkpoint-4").mkdir()
    marked_at_flush = []

    class Events:
        def flush(self):
            marked_at_flush.append((tmp_path / "checkpoint-4" / MARKER).exists())

    MarkComplete("run", flush=(Events(),)).on_save(SimpleNamespace(output_dir=str(tmp_path)),
                                                   SimpleNamespace(global_step=4), None)
    assert marked_at_flush == [False] and (tmp_path / "checkpoint-4" / MARKER).exists()
