"""What the trainer starts (its checkpoint writers) dies when it is killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.trainer.test_train import RUN_TIMEOUT_S, tiny_config

# Forks a child that would sleep for a minute, prints its pid, then waits to be killed.
PARENT = """
import os, sys, threading, time
from trainer import children
if sys.argv[1] == "hooked":
    children.end_with_this_process()
def fork():
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
if sys.argv[2] == "thread":
    thread = threading.Thread(target=fork)
    thread.start()
    thread.join()
else:
    fork()
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has died; only its parent's reaping is left


def _child_after_parent_killed(mode: str, forked_from: str = "main", *, wait_s: float = 10.0) -> bool:
    """Whether the forked child is still alive `wait_s` after its parent's SIGKILL (it is
    looked at until then, so a child that dies is seen dead at once)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode, forked_from], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + wait_s
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        return _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_forked_by_the_trainer_dies_with_it():
    assert _child_after_parent_killed("hooked") is False


def test_without_the_hook_the_orphan_lives_on():
    # The control: what the hook prevents does happen without it.
    assert _child_after_parent_killed("plain", wait_s=1.0) is True


def test_a_child_forked_from_another_thread_is_left_alone():
    # The death signal follows the forking thread, which may end long before the process.
    assert _child_after_parent_killed("hooked", forked_from="thread", wait_s=1.0) is True


def _processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is `folder`: what a trainer started there."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/cwd") == str(folder) and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _writing_into(pid: int, folder: Path) -> bool:
    """Whether process `pid` has a file under `folder` open (a writer at work, long past its fork)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{folder}/"):
                    return True
    except OSError:
        pass
    return False


def test_a_trainer_killed_mid_save_leaves_no_writer_behind(tmp_path):
    config = tiny_config(tmp_path, steps=400, checkpoint={"interval_steps": 2})
    (tmp_path / "config.json").write_text(json.dumps(config))
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", "--config", "config.json"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    writer = None
    try:
        # Catch a save in the act: a child of the trainer writing into the checkpoint folder,
        # stopped at once (SIGSTOP) so that it cannot finish and exit on its own. A stopped
        # process still dies of SIGKILL, the signal its parent's death sends it.
        parent = psutil.Process(trainer.pid)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while writer is None:
            assert trainer.poll() is None and time.monotonic() < deadline, "no save was caught"
            for child in parent.children():
                if not _writing_into(child.pid, tmp_path / "ckpt"):
                    continue
                try:
                    child.send_signal(signal.SIGSTOP)
                except psutil.NoSuchProcess:
                    continue
                if _alive(child.pid):  # not a writer that had already exited (a zombie)
                    writer = child.pid
                    break
            time.sleep(0.001)
        assert writer in _processes_in(tmp_path)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        deadline = time.monotonic() + 5
        while _processes_in(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_in(tmp_path) == []
    finally:
        for pid in _processes_in(tmp_path):
            os.kill(pid, signal.SIGKILL)
