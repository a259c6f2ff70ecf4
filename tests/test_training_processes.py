"""Training runs in several processes (``TRAINING_PROCESSES``; ``training.ml.launch``): through the real
runner, two CPU processes (torchrun, gloo) on the tiny bootstrapped models give the candidate one
process gives; progress, cancel, failures and time limits reach the run row, and no process outlives
the run. Then the launcher's spec, events and batch rules, without processes."""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
from pathlib import Path

import pytest

from models_registry.artifacts import resolve_artifact_path, verify_checksums
from models_registry.models import ModelVersion
from tests.helpers import (
    ROOT,
    make_bootstrapped_live,
    no_checkpoints_left,
    run_here,
    soft_time_limit_from_step,
    training_run_start,
    wait_until,
)
from tests.training_data import seed_rated_conversations
from training import runner, services
from training.ml import launch
from training.ml.config import validate_config
from training.ml.distributed import per_process_batch_size, plan_processes, usable_processes
from training.models import TrainingRun

# Six optimiser steps of four rows (two a process). 48 conversations leave about 36 training pairs
# (a quarter is held out; at least 24 in all but vanishingly rare splits), so every step's batch is
# full and each process gets the same rows one process would see in that step (accelerate shards the
# batches, it does not reshuffle).
CONFIG = {
    "max_steps": 6,
    "batch_size": 4,
    "max_length": 128,
    "max_new_tokens": 8,
    "eval_prompts": 8,
    "eval_max_new_tokens": 16,
    "min_train_rows": 4,
    "test_fraction": 0.25,
}
CONVERSATIONS = 48
# 1 vs 2 processes: same rows per step and the same global batch (batch_size 4 = 2 processes x 2),
# and DDP averages the two half-batch gradients, which is the full batch's mean gradient. What is left
# is float32 summation order (the all-reduce), about 1e-7 relative per step: measured, the evaluation
# agreed to 4 decimals and the train loss to 1e-8. 1e-3 is far above that and far below what a real
# difference moves: another seed moved the reward model's mean margin by 0.9-1.4 and DPO's KL from
# 0.018 to 0.08; a doubled global batch (each process taking all of batch_size) moved the train loss
# by 17% (0.295 -> 0.246) while the reward evaluation moved by only 0.0009, hence the train loss too.
TOLERANCE = 1e-3
COMPARED = {
    "reward": ("accuracy", "mean_margin", "calibration_ece", "brier"),
    "dpo": ("mean_reward", "win_rate", "kl", "mean_length"),
}


@pytest.fixture
def live(bootstrapped, settings, tmp_path):
    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TRAINING_DATASETS_DIR = tmp_path / "datasets"
    settings.TRAINING_HEARTBEAT_SECONDS = 0.1
    settings.TRAINING_PROCESSES = 2
    return make_bootstrapped_live(bootstrapped)


@pytest.fixture
def leaves_nothing_behind():
    """After the test: no torchrun or rank of this checkout alive, no work folder left."""
    before = set(_work_dirs())
    yield
    assert wait_until(lambda: not launched_processes(), timeout=15), launched_processes()
    assert set(_work_dirs()) <= before


def launched_processes(rank: str | None = None) -> list[int]:
    """Live torchrun agents and ranks started from this checkout (Linux ``/proc``), or only rank ``rank``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = Path(os.readlink(entry / "cwd"))
            environ = (entry / "environ").read_bytes().split(b"\0") if rank is not None else []
        except OSError:  # gone meanwhile, or not ours
            continue
        if b"training.ml.launch" not in cmdline or cwd != ROOT:
            continue
        if rank is None or f"RANK={rank}".encode() in environ:
            found.append(int(entry.name))
    return found


def _work_dirs() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{launch.WORK_PREFIX}*"))


def start(kind: str, django_capture_on_commit_callbacks, **config) -> TrainingRun:
    return training_run_start(kind, django_capture_on_commit_callbacks, {**CONFIG, **config})


# --- Through the runner ---------------------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.usefixtures("leaves_nothing_behind")
@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_two_processes_register_the_candidate_one_process_would(
    kind, live, alice, settings, monkeypatch, django_capture_on_commit_callbacks
):
    seed_rated_conversations(alice, CONVERSATIONS)

    def never(*args, **kwargs):
        raise AssertionError("one process must train in the worker's own process")

    settings.TRAINING_PROCESSES = 1
    with monkeypatch.context() as patch:
        patch.setattr(launch, "train_in_processes", never)
        single = run_here(start(kind, django_capture_on_commit_callbacks))
    assert single.status == "succeeded", single.error_message
    assert "processes" not in single.metrics["train"]

    settings.TRAINING_PROCESSES = 2
    run = run_here(start(kind, django_capture_on_commit_callbacks))

    assert run.status == "succeeded", f"{run.error_message}\n{run.log_tail}"
    assert run.dataset.content_hash == single.dataset.content_hash
    version = run.output_version
    assert version.status == ModelVersion.Status.CANDIDATE
    assert version.kind == ("reward" if kind == "reward" else "policy")
    assert version.parent == live[version.kind]
    assert version.training_run == run
    verify_checksums(resolve_artifact_path(version.artifact_path), version.checksums)
    # The layout one process saves: float32 safetensors, config, tokenizer; nothing of the trainer's.
    assert version.checksums.keys() == single.output_version.checksums.keys()
    assert version.checksums.keys() >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert run.metrics["train"]["processes"] == 2
    assert run.metrics["train"]["steps"] == single.metrics["train"]["steps"] == CONFIG["max_steps"]
    assert run.metrics["train"]["train_loss"] == pytest.approx(single.metrics["train"]["train_loss"], abs=TOLERANCE)
    for metric in COMPARED[kind]:
        assert run.metrics["eval"][metric] == pytest.approx(single.metrics["eval"][metric], abs=TOLERANCE), metric
    assert run.metrics["eval"] == version.metrics["eval"]
    assert "training in 2 processes (gloo on the CPU), 2 rows each a step" in run.log_tail


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.usefixtures("leaves_nothing_behind")
def test_the_run_row_gets_progress_and_log_lines_from_the_processes(
    live, alice, monkeypatch, django_capture_on_commit_callbacks
):
    seed_rated_conversations(alice, CONVERSATIONS)
    run = start("reward", django_capture_on_commit_callbacks, max_steps=4)
    seen: list[tuple[int, int, int | None]] = []  # (step reported, total, step on the row just after)
    report = runner.Reporter.report

    def recorded(self, progress):
        report(self, progress)
        row_step = TrainingRun.objects.values_list("step", flat=True).get(id=self.run_id)
        seen.append((progress.step, progress.total_steps, row_step))

    monkeypatch.setattr(runner.Reporter, "report", recorded)
    run = run_here(run)

    assert run.status == "succeeded", f"{run.error_message}\n{run.log_tail}"
    assert [step for step, _, _ in seen] == sorted(step for step, _, _ in seen)
    assert {total for _, total, _ in seen} == {4}
    assert {step for step, _, _ in seen} >= {0, 4}
    assert all(step == row_step for step, _, row_step in seen)  # each report reached the row at once
    assert (run.step, run.total_steps, run.progress) == (4, 4, 1.0)
    assert run.metrics["train"]["steps"] == 4
    # Rank 0 alone writes the log: each line once.
    assert run.log_tail.count("training started: 4 steps") == 1
    assert run.log_tail.count("step 4/4 loss") == 1
    assert run.log_tail.count("saved the model to") == 1


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.usefixtures("leaves_nothing_behind")
def test_cancel_stops_every_process_after_the_same_step(
    live, alice, monkeypatch, settings, django_capture_on_commit_callbacks
):
    seed_rated_conversations(alice, CONVERSATIONS)
    run = start("dpo", django_capture_on_commit_callbacks, max_steps=200)
    report = runner.Reporter.report

    def operator_cancels(self, progress):
        if progress.step >= 2:
            services.training_run_cancel(run_id=self.run_id)
        report(self, progress)

    monkeypatch.setattr(runner.Reporter, "report", operator_cancels)
    run = run_here(run)

    assert run.status == "cancelled", f"{run.error_message}\n{run.log_tail}"
    assert run.error_message == "Cancelled by an operator."
    # Rank 0 decided; had rank 1 not stopped after that same step too, the run would have hung in
    # the next all-reduce instead of ending here.
    stopped_after = re.search(r"stop requested: stopping after step (\d+)/200", run.log_tail)
    assert stopped_after is not None, run.log_tail
    assert 2 <= int(stopped_after[1]) < 200
    assert "stopped: cancelled" in run.log_tail
    assert ModelVersion.objects.filter(kind="policy").count() == 1
    assert no_checkpoints_left(settings)


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.usefixtures("leaves_nothing_behind")
def test_a_failing_process_fails_the_run_with_its_error(live, alice, settings, django_capture_on_commit_callbacks):
    from feedback.models import Feedback

    seed_rated_conversations(alice, CONVERSATIONS)
    Feedback.objects.filter(rating=1).delete()  # only good answers are rated now: KTO refuses
    run = run_here(start("kto", django_capture_on_commit_callbacks))

    assert run.status == "failed"
    assert run.error_message.startswith("Training failed: KTO needs both desirable and undesirable examples")
    assert "Last output of training process " in run.error_message
    assert "ValueError: KTO needs both desirable and undesirable examples" in run.error_message  # its stderr
    assert run.error == "training_processes_failed"
    assert ModelVersion.objects.filter(kind="policy").count() == 1
    assert no_checkpoints_left(settings)


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.usefixtures("leaves_nothing_behind")
def test_a_killed_process_fails_the_run_and_the_other_is_stopped(
    live, alice, monkeypatch, settings, django_capture_on_commit_callbacks
):
    seed_rated_conversations(alice, CONVERSATIONS)
    run = start("dpo", django_capture_on_commit_callbacks, max_steps=200)
    report = runner.Reporter.report
    killed: list[int] = []

    def rank_one_killed(self, progress):  # as the kernel's out-of-memory killer would
        report(self, progress)
        if progress.step >= 1 and not killed:
            killed.extend(launched_processes(rank="1"))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    monkeypatch.setattr(runner.Reporter, "report", rank_one_killed)
    run = run_here(run)

    assert len(killed) == 1
    assert run.status == "failed"
    assert run.error_message.startswith("Training failed:")
    assert "killed, or out of memory?" in run.error_message
    assert "SIGKILL" in run.error_message  # torchrun's account, which names the process
    assert ModelVersion.objects.filter(kind="policy").count() == 1
    assert no_checkpoints_left(settings)


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.usefixtures("leaves_nothing_behind")
def test_the_soft_time_limit_stops_every_process(
    live, alice, monkeypatch, settings, django_capture_on_commit_callbacks
):
    seed_rated_conversations(alice, CONVERSATIONS)
    run = start("reward", django_capture_on_commit_callbacks, max_steps=200)
    soft_time_limit_from_step(monkeypatch, 1)
    run = run_here(run)

    assert run.status == "failed"
    assert run.error_message.startswith("The run took longer than its time limit")
    assert ModelVersion.objects.filter(kind="reward").count() == 1
    assert no_checkpoints_left(settings)


# --- KTO and PPO, without the database -------------------------------------------------------------------
def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.mark.usefixtures("leaves_nothing_behind")
@pytest.mark.parametrize("kind", ["kto", "ppo"])
def test_kto_and_ppo_train_in_two_processes(kind, bootstrapped, tmp_path):
    from training.ml.chat_corpus import generate_conversations, preference_pairs
    from training.ml.progress import RunHooks

    if kind == "kto":
        chats = [(pair[i % 2], i % 2 == 0) for i, pair in enumerate(preference_pairs(13, 16))]  # (chosen, rejected)
        rows = [{"prompt": chat[:-1], "completion": chat[-1:], "label": good} for chat, good in chats]
    else:
        rows = [{"prompt": chat[:-1]} for chat in generate_conversations(14, 16)]
    _write_rows(tmp_path / "data" / "train.jsonl", rows)
    _write_rows(tmp_path / "data" / "test.jsonl", [])
    lines: list[str] = []
    result = launch.train_in_processes(
        kind,
        processes=2,
        config=validate_config(kind, {**CONFIG, "max_steps": 3}),
        data_dir=tmp_path / "data",
        base_dir=bootstrapped.policy_dir,
        output_dir=tmp_path / "out",
        hooks=RunHooks(log=lines.append, heartbeat_seconds=0.1),
        reward_dir=bootstrapped.reward_dir,
    )
    assert (result.steps, result.stopped, result.metrics["processes"]) == (3, False, 2)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert sum(line.startswith("saved the ") for line in lines) == 1  # rank 0 alone


# --- The launcher without processes -------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path) -> dict[str, str]:
    for name in ("data", "base", "reward"):
        (tmp_path / name).mkdir()
    return {
        "data_dir": str(tmp_path / "data"),
        "base_dir": str(tmp_path / "base"),
        "reward_dir": str(tmp_path / "reward"),
        "output_dir": str(tmp_path / "out"),
    }


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_a_spec_round_trips(tmp_path, folders):
    config = validate_config("dpo", {"batch_size": 4, "beta": 0.2})
    spec = launch.Spec(
        kind="dpo",
        config=config,
        data_dir=Path(folders["data_dir"]),
        base_dir=Path(folders["base_dir"]),
        output_dir=Path(folders["output_dir"]),
        reward_dir=None,
        heartbeat_seconds=2.5,
    )
    launch.write_spec(tmp_path / "spec.json", spec)
    assert launch.read_spec(tmp_path / "spec.json") == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": None}, "it lacks kind"),
        ({"heartbeat_seconds": None, "config": None}, "it lacks config, heartbeat_seconds"),
        ({"extra": 1}, "it has unknown keys extra"),
        ({"kind": "sft"}, "kind 'sft' is not one of reward, ppo, dpo, kto"),
        ({"config": {"batch_size": 0}}, "its config is invalid (batch_size: Must be between 1 and 4096; got 0.)"),
        ({"config": {"epoch": 1}}, "its config is invalid (epoch: Unknown setting."),
        ({"base_dir": "/nowhere/at/all"}, "base_dir /nowhere/at/all is not a folder"),
        ({"output_dir": 7}, "output_dir must be a path, not 7"),
        ({"heartbeat_seconds": "often"}, "heartbeat_seconds must be a number of seconds, not 'often'"),
    ],
)
def test_a_bad_spec_is_refused_saying_what_is_wrong(tmp_path, folders, change, message):
    raw = {"kind": "reward", "config": {}, "heartbeat_seconds": 1.0, **folders, **change}
    raw = {key: value for key, value in raw.items() if value is not None or key == "reward_dir"}
    path = write(tmp_path, raw)
    with pytest.raises(launch.SpecError) as caught:
        launch.read_spec(path)
    assert str(caught.value).startswith(f"Training spec {path} cannot be used: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read: No such file or directory."),
        ("{not json", "is not JSON: "),
        ("[1, 2]", "must be a JSON object, not list."),
    ],
)
def test_an_unreadable_spec_is_refused(tmp_path, content, message):
    path = tmp_path / "spec.json" if content is None else write(tmp_path, content)
    with pytest.raises(launch.SpecError, match=f"^Training spec {path} "):
        launch.read_spec(path)
    with pytest.raises(launch.SpecError) as caught:
        launch.read_spec(path)
    assert message in str(caught.value)


def test_a_rank_given_a_bad_spec_reports_it_as_its_error(tmp_path, monkeypatch, capsys):
    from training.ml.launch import rank

    monkeypatch.setattr(rank, "_redirect_output", lambda path: None)  # a rank's own files, not pytest's
    path = write(tmp_path, {"kind": "reward"})
    assert launch.run_rank(path) == 1
    (event,) = launch.EventTail(tmp_path / launch.EVENTS_FILE).read()
    assert event["event"] == "error"
    assert event["rank"] == 0
    assert event["peer"] is False
    assert event["message"].startswith(f"Training spec {path} cannot be used: it lacks ")
    err = capsys.readouterr().err
    assert "training.ml.launch.protocol.SpecError: Training spec" in err  # the traceback, for its log


def test_the_command_line_is_refused_without_a_spec(capsys):
    assert launch.main([]) == 2
    assert launch.main(["--agent", "x", "2", "spec.json"]) == 2
    assert "usage: python -m training.ml.launch SPEC.json" in capsys.readouterr().err


def test_the_ranks_get_torchruns_rank_variables_not_the_workers(monkeypatch):
    """A worker in a cluster job's pod has the pod's rank variables, and torchrun's PET_ defaults:
    PET_NNODES=2 would have torchrun wait for a second node."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    env = launch._child_env()
    assert not {"WORLD_SIZE", "RANK", "OMPI_COMM_WORLD_SIZE", "PET_NNODES", "TORCHELASTIC_RESTART_COUNT"} & set(env)
    assert env["PYTHONPATH"].startswith(str(ROOT))
    assert "--nnodes=1" in launch.torchrun_command(2, Path("spec.json"))


def test_a_killed_processs_scratch_folders_are_removed_by_the_next_run(tmp_path, monkeypatch):
    """A worker killed outright (Celery's hard time limit, kill -9) cannot remove its folders; the
    next scratch folder made on the machine removes those whose maker is gone, and only those."""
    import socket
    import subprocess
    import sys

    from training.ml import scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    owners = {
        "rlhf-train-processes-killed": f"{host} {dead.pid}",
        "rlhf-train-killed": f"{host} {dead.pid}",
        "rlhf-train-running": f"{host} {os.getpid()}",
        "rlhf-train-other-machine": f"another-host {dead.pid}",
    }
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / scratch.OWNER_FILE).write_text(owner)
        (tmp_path / name / "checkpoint-1").mkdir()
    (tmp_path / "rlhf-train-being-made").mkdir()  # no owner yet
    (tmp_path / "something-else").mkdir()

    with scratch.scratch_dir() as made:
        assert (made / scratch.OWNER_FILE).read_text() == f"{host} {os.getpid()}\n"
        left = sorted(p.name for p in tmp_path.iterdir() if p != made)
    assert left == ["rlhf-train-being-made", "rlhf-train-other-machine", "rlhf-train-running", "something-else"]
    assert not made.exists()


def test_events_are_read_whole_lines_at_a_time(tmp_path):
    tail = launch.EventTail(tmp_path / launch.EVENTS_FILE)
    assert tail.read() == []  # no file yet
    launch.append_event(tmp_path, {"event": "log", "line": "one"})
    with (tmp_path / launch.EVENTS_FILE).open("a") as stream:
        stream.write('{"event": "log", "li')  # a line still being written
    assert tail.read() == [{"event": "log", "line": "one"}]
    with (tmp_path / launch.EVENTS_FILE).open("a") as stream:
        stream.write('ne": "two"}\nnot json\n')
    assert tail.read() == [
        {"event": "log", "line": "two"},
        {"event": "log", "line": "unreadable event from the training processes: b'not json'"},
    ]


def test_a_collective_that_lost_its_peer_is_not_the_cause():
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1234.")
    assert launch.lost_a_peer(gloo)
    assert not launch.lost_a_peer(ValueError("KTO needs both desirable and undesirable examples"))


def test_the_batch_is_split_evenly_or_fewer_processes_are_used():
    assert per_process_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match="batch_size 6 does not split evenly over 4 processes"):
        per_process_batch_size(6, 4)
    assert usable_processes("reward", 8, 1) == (1, None)
    assert usable_processes("dpo", 8, 8) == (8, None)
    processes, why = usable_processes("reward", 6, 4)
    assert processes == 3
    assert why.startswith("training in 3 of 4 processes: batch_size 6 must split evenly")
    assert why.endswith("a batch_size that is a multiple of 4 would use all 4")
    processes, why = usable_processes("kto", 8, 8)
    assert processes == 4
    assert "at least 2 rows a process for kto" in why
    assert why.endswith("a multiple of 16 would use all 8")
    assert usable_processes("kto", 2, 2)[0] == 1


def test_a_gpu_node_trains_in_one_process_a_gpu_at_most():
    assert plan_processes("dpo", 64, 8, gpus=8) == (
        8,
        ["training in 8 processes (NCCL, one GPU each), 8 rows each a step"],
    )
    processes, lines = plan_processes("dpo", 64, 8, gpus=4)
    assert processes == 4
    assert lines[0] == "TRAINING_PROCESSES is 8 but this node has 4 GPUs: one process a GPU"
    assert plan_processes("reward", 4, 2, gpus=0) == (
        2,
        ["training in 2 processes (gloo on the CPU), 2 rows each a step"],
    )
    assert plan_processes("reward", 4, 1, gpus=2) == (1, [])
