"""A process the trainer forks (dist_checkpointing's writers) dies when the trainer is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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


def _child_after_parent_killed(mode: str, forked_from: str = "main") -> bool:
    """Whether the forked child is still alive a while after its parent's SIGKILL."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode, forked_from], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 3
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
    assert _child_after_parent_killed("plain") is True


def test_a_child_forked_from_another_thread_is_left_alone():
    # The death signal follows the forking thread, which may end long before the process.
    assert _child_after_parent_killed("hooked", forked_from="thread") is True
