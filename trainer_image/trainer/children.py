"""Processes the trainer starts end with it.

A trainer killed outright (OOM killer, `kill -9`, a node agent) runs no clean-up, and the
processes it starts would outlive it: dist_checkpointing's writers, forked mid-save, which
carry the trainer's command line, go on writing into a checkpoint nobody will publish and hold
the workload's lock. In a pod the container's end kills them; everywhere else this does: each
asks the kernel for SIGKILL when its parent dies (Linux `PR_SET_PDEATHSIG`). Other systems keep
the default.

The signal follows the *thread* that started the child, so only children started from the main
thread ask for it; the trainer saves from there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
LINUX = sys.platform.startswith("linux")

_registered = False
_forking_from: dict[str, int | bool] = {}


def end_with_this_process() -> None:
    """From now on, every child forked from the main thread is killed when this process dies."""
    global _registered
    if _registered or not LINUX:
        return
    os.register_at_fork(before=_note_forking_thread, after_in_child=_after_fork_in_child)
    _registered = True


def die_with_parent(parent: int) -> None:
    """In a child of `parent`: SIGKILL when it dies; exit at once if it already has."""
    if not LINUX:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # it died before the request took hold
        os._exit(1)


def _note_forking_thread() -> None:
    _forking_from["main"] = threading.current_thread() is threading.main_thread()
    _forking_from["pid"] = os.getpid()


def _after_fork_in_child() -> None:
    if _forking_from.get("main"):
        die_with_parent(int(_forking_from["pid"]))
