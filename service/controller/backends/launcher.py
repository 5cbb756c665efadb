"""Run a workload's command in its folder at most once, and record how it ended.

The local backend starts this file by path (`python launcher.py COMMAND...`, no package import,
so it starts in milliseconds) in the workload's folder, in a session of its own. It:

1. takes an exclusive `flock` on `launch.lock` (retrying briefly: the controller probes the lock
   for an instant to see whether anything still holds it) and gives up if another launcher holds
   it, or if a launcher already ran here (`pid` or `exitcode` exists): so however often a
   controller killed between starting it and noting that it did starts it again, the command
   runs once;
2. writes its own pid to `pid` (the process group to signal: it leads its session);
3. runs the command, which inherits the locked descriptor: as long as any of the workload's
   processes lives, the lock is held, whatever happened to this one;
4. writes the exit code to `exitcode` (128 + N for a command killed by signal N, as a shell
   does), atomically, whoever is (or is not) watching.

SIGTERM to the group is for the command (the trainer saves and exits); this process stays to
record how it ended.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

LOCK_FILE = "launch.lock"
PID_FILE = "pid"
EXIT_CODE_FILE = "exitcode"
ANOTHER_LAUNCHER = 75  # EX_TEMPFAIL: not an exit of the command; nothing ran
LOCK_ATTEMPTS = 100
LOCK_RETRY_S = 0.02


def _write_atomically(name: str, text: str) -> None:
    with open(name + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(name + ".tmp", name)


def main(command: list[str]) -> int:
    lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    for _ in range(LOCK_ATTEMPTS):
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(LOCK_RETRY_S)
    else:
        return ANOTHER_LAUNCHER
    if os.path.exists(PID_FILE) or os.path.exists(EXIT_CODE_FILE):
        return ANOTHER_LAUNCHER  # one ran here already
    _write_atomically(PID_FILE, str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: None)  # a handler, not SIG_IGN: the child resets it
    child = subprocess.Popen(command, pass_fds=(lock,))
    code = child.wait()
    code = 128 - code if code < 0 else code
    _write_atomically(EXIT_CODE_FILE, str(code))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
