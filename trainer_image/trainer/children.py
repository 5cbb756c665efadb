"""Processes the trainer forks end with it.

dist_checkpointing's writer forks worker processes (the `fork` context) that carry the
trainer's command line. A trainer killed mid-save (OOM killer, `kill -9`, a node agent) would
leave them orphaned, still writing into a checkpoint nobody will publish and still holding the
workload's lock, so the next attempt's trainer would share the machine with a dead one's
writers. In a pod the container's end kills them too; everywhere else this does: each child
forked from the main thread asks the kernel for SIGKILL when its parent dies (Linux
`PR_SET_PDEATHSIG`). Other systems keep the default.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1

_registered = False


def end_with_this_process() -> None:
    """From now on, every child forked from the main thread is killed when this process dies."""
    global _registered
    if _registered or not sys.platform.startswith("linux"):
        return
    os.register_at_fork(before=_note_forking_thread, after_in_child=_die_with_parent)
    _registered = True


_forker: dict[str, int | bool] = {}


def _note_forking_thread() -> None:
    # The signal follows the forking *thread*: one forked from a thread that may end first
    # would die with that thread, so only the main thread's children get it.
    _forker["main"] = threading.current_thread() is threading.main_thread()
    _forker["pid"] = os.getpid()


def _die_with_parent() -> None:
    if not _forker.get("main"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != _forker.get("pid"):  # the parent died before the request took hold
        os._exit(1)
