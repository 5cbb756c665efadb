"""Real Postgres and Redis servers for the test suite.

``provide_postgres()`` / ``provide_redis()`` yield ``TEST_DATABASE_URL`` /
``TEST_REDIS_URL`` unchanged when those are set. Otherwise they start a
throwaway server from the local binaries on a free loopback port, in a fresh
temporary directory, and stop it and delete the directory afterwards.

Postgres refuses to run as root, so when the tests run as root the server runs
as the ``postgres`` OS user (``nobody`` when there is none); its directory is
handed to that user. The server runs with fsync off: its data is thrown away.

A server is stopped when its context manager exits, at interpreter exit if that
never happens, and, for a test process that was killed outright, by the next
run, which removes throwaway directories whose owning process is gone.

``.ci/ensure-binaries`` installs the binaries when they are missing.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PG_DATABASE = "pretrain_test"
PG_SUPERUSER = "postgres"

_PG_PREFIX = "pretrain-test-pg-"
_REDIS_PREFIX = "pretrain-test-redis-"
_OWNER_FILE = "owner.pid"
_SERVER_PID_FILE = "server.pid"
_PORT_ATTEMPTS = 5
_START_TIMEOUT_S = 60
_PORT_IN_USE = re.compile(
    r"address already in use|could not bind|could not create any tcp/ip", re.I
)


class ServerStartError(RuntimeError):
    """A throwaway server could not be started."""


# --------------------------------------------------------------------- helpers


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _base_tmpdir() -> str:
    # Postgres puts its unix socket in the directory; socket paths are limited
    # to ~107 bytes, and a root-run server's user must be able to reach it.
    base = tempfile.gettempdir()
    if (os.geteuid() == 0 or len(base) > 60) and os.path.isdir("/tmp"):
        base = "/tmp"
    return base


def _make_tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_base_tmpdir()))
    (path / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    return path


class _Cleanup:
    """Runs once: on context exit, or at interpreter exit if that never comes."""

    def __init__(self, func: Callable[[], None]) -> None:
        self._func: Callable[[], None] | None = func
        atexit.register(self)

    def __call__(self) -> None:
        func, self._func = self._func, None
        atexit.unregister(self)
        if func is not None:
            func()


# -------------------------------------------------------------------- postgres


def _pg_version_key(bindir: str) -> tuple[int, ...]:
    name = Path(bindir).parent.name
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def find_pg_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` of one Postgres version."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        # /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb: use that
        # version's pg_ctl, not whatever pg_ctl comes first in PATH.
        candidates += [Path(os.path.realpath(initdb)).parent, Path(initdb).parent]
    candidates += [
        Path(d)
        for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_pg_version_key, reverse=True)
    ]
    for bindir in candidates:
        if os.access(bindir / "initdb", os.X_OK) and os.access(bindir / "pg_ctl", os.X_OK):
            return bindir
    raise ServerStartError(
        "initdb/pg_ctl not found in PATH or /usr/lib/postgresql/*/bin; run .ci/ensure-binaries "
        "(or apt-get install postgresql), or set TEST_DATABASE_URL"
    )


def _pg_os_user() -> pwd.struct_passwd | None:
    """The account to run Postgres as: None means the current one."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerStartError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _run_kwargs(user: pwd.struct_passwd | None, cwd: Path) -> dict:
    kwargs: dict = {
        "cwd": cwd,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.STDOUT,
        "text": True,
    }
    if user is not None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=str(cwd), USER=user.pw_name, LOGNAME=user.pw_name)
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[], env=env)
    else:
        kwargs["env"] = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return kwargs


def _stop_postgres(pg_ctl: Path | None, data: Path, run_kwargs: dict) -> None:
    pid = _read_pid(data / "postmaster.pid")
    if pid is None:
        return
    if pg_ctl is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                timeout=40,
                check=False,
                **run_kwargs,
            )
    if _pid_alive(pid) and "postgres" in _cmdline(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _pg_start_options(port: int, socket_dir: Path, *, survives_crash: bool = False) -> str:
    """Fast and throwaway; `survives_crash` keeps what a commit acknowledged across an immediate
    stop (the write-ahead log reaches the OS before a commit returns; fsync stays off, since
    the machine itself does not crash)."""
    options = [
        "-c listen_addresses=127.0.0.1",
        f"-p {port}",
        f"-k {shlex.quote(str(socket_dir))}",
        "-c fsync=off",
        "-c full_page_writes=off",
        "-c max_connections=200",
    ]
    if not survives_crash:
        options.append("-c synchronous_commit=off")
    return " ".join(options)


def _create_database(port: int, name: str) -> None:
    import psycopg  # imported here: only needed once a server runs
    from psycopg import sql

    with psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=PG_SUPERUSER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _pg_ctl_start(server: PostgresServer) -> tuple[int, str]:
    """`pg_ctl start` on the server's data and port; its exit status and what it logged."""
    log_offset = server.logfile.stat().st_size if server.logfile.exists() else 0
    started = subprocess.run(
        [
            str(server.pg_ctl),
            "-D", str(server.data),
            "-w",
            "-t", str(_START_TIMEOUT_S),
            "-l", str(server.logfile),
            "-o", _pg_start_options(
                server.port, server.data.parent, survives_crash=server.survives_crash
            ),
            "start",
        ],
        timeout=_START_TIMEOUT_S + 30,
        check=False,
        **server.run_kwargs,
    )  # fmt: skip
    try:
        with server.logfile.open(errors="replace") as fh:
            fh.seek(log_offset)
            new_log = fh.read()
    except OSError:
        new_log = ""
    return started.returncode, f"{started.stdout}\n{new_log}"


@dataclass
class PostgresServer:
    """A private Postgres server this process started, which it may stop and start again on the
    same data and port (the chaos suite restarts it under a running service)."""

    pg_ctl: Path
    data: Path
    logfile: Path
    run_kwargs: dict
    port: int = 0
    database: str = PG_DATABASE
    survives_crash: bool = False  # see `_pg_start_options`

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        """Stop it at once (`-m immediate`: no shutdown checkpoint, as a crash would)."""
        _stop_postgres(self.pg_ctl, self.data, self.run_kwargs)

    def start(self) -> None:
        """Start it again on the port it had; it recovers from its write-ahead log."""
        code, said = _pg_ctl_start(self)
        if code != 0:
            _stop_postgres(self.pg_ctl, self.data, self.run_kwargs)  # in case it half-started
            raise ServerStartError(f"pg_ctl start failed (exit {code}):\n{said}")


@contextlib.contextmanager
def throwaway_postgres_server(
    database: str = PG_DATABASE, *, survives_crash: bool = False
) -> Iterator[PostgresServer]:
    """Start a private Postgres server; yield its handle (`url`, `stop`, `start`).

    The URL is ``postgresql+psycopg://postgres@127.0.0.1:PORT/<database>``
    (trust authentication, no password).
    """
    reap_orphans()
    bindir = find_pg_bindir()
    user = _pg_os_user()
    tmpdir = _make_tmpdir(_PG_PREFIX)
    server = PostgresServer(
        pg_ctl=bindir / "pg_ctl",
        data=tmpdir / "data",
        logfile=tmpdir / "postgres.log",
        run_kwargs=_run_kwargs(user, tmpdir),
        database=database,
        survives_crash=survives_crash,
    )

    def cleanup() -> None:
        try:
            server.stop()
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    stop = _Cleanup(cleanup)
    try:
        if user is not None:
            os.chown(tmpdir, user.pw_uid, user.pw_gid)
        tmpdir.chmod(0o700)
        initdb = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D", str(server.data),
                "-A", "trust",
                "-U", PG_SUPERUSER,
                "--no-sync",
                "-E", "UTF8",
                "--locale=C",
            ],
            timeout=120,
            check=False,
            **server.run_kwargs,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise ServerStartError(f"initdb failed (exit {initdb.returncode}):\n{initdb.stdout}")

        for attempt in range(1, _PORT_ATTEMPTS + 1):
            server.port = free_port()
            code, said = _pg_ctl_start(server)
            if code == 0:
                break
            server.stop()  # in case it half-started
            if attempt < _PORT_ATTEMPTS and _PORT_IN_USE.search(said):
                continue  # lost a race for the port: pick another
            raise ServerStartError(
                f"pg_ctl start failed (exit {code}):\n{said}\n"
                f"--- {server.logfile} (tail) ---\n{_tail(server.logfile)}"
            )

        _create_database(server.port, database)
        yield server
    finally:
        stop()


@contextlib.contextmanager
def throwaway_postgres(database: str = PG_DATABASE) -> Iterator[str]:
    """Start a private Postgres server; yield its SQLAlchemy URL (see `throwaway_postgres_server`)."""
    with throwaway_postgres_server(database) as server:
        yield server.url


# ----------------------------------------------------------------------- redis


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    for path in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(path, os.X_OK):
            return path
    raise ServerStartError(
        "redis-server not found; run .ci/ensure-binaries (or apt-get install redis-server), "
        "or set TEST_REDIS_URL"
    )


def _redis_server_pid(port: int, password: str | None = None) -> int | None:
    """The process id of the Redis server answering on ``port``, if one answers (to AUTH with
    ``password``, when given).

    Checked against our child's pid: a server that lost the race for its port
    exits, and in the meantime someone else's server may answer there.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if sock.recv(5) != b"+OK\r\n":
                    return None
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
                if match := re.search(rb"\bprocess_id:(\d+)\r\n", reply):
                    return int(match.group(1))
                if len(reply) > 65536 or not reply.startswith(b"$"):
                    break  # an error reply, or not Redis
    except OSError:
        pass
    return None


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def throwaway_redis(password: str | None = None) -> Iterator[str]:
    """Start a private Redis server (no persistence); yield ``redis://127.0.0.1:PORT/0``.

    With `password` the server requires AUTH with it (the URL yielded does not carry it)."""
    reap_orphans()
    binary = find_redis_server()
    tmpdir = _make_tmpdir(_REDIS_PREFIX)
    logfile = tmpdir / "redis.log"
    procs: list[subprocess.Popen] = []

    def cleanup() -> None:
        try:
            for proc in procs:
                _stop_process(proc)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    stop = _Cleanup(cleanup)
    try:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port()
            with logfile.open("ab") as log:
                proc = subprocess.Popen(
                    [
                        binary,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                        "--dir", str(tmpdir),
                        *(["--requirepass", password] if password else []),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmpdir,
                )  # fmt: skip
            procs.append(proc)
            (tmpdir / _SERVER_PID_FILE).write_text(f"{proc.pid}\n")
            deadline = time.monotonic() + _START_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                if _redis_server_pid(port, password) == proc.pid:
                    break
                time.sleep(0.02)
            if proc.poll() is None and _redis_server_pid(port, password) == proc.pid:
                break
            _stop_process(proc)
            log_tail = _tail(logfile)
            if attempt < _PORT_ATTEMPTS and _PORT_IN_USE.search(log_tail):
                logfile.unlink(missing_ok=True)
                continue
            raise ServerStartError(
                f"redis-server (pid {proc.pid}) did not come up on port {port} "
                f"(exit {proc.returncode}):\n--- {logfile} (tail) ---\n{log_tail}"
            )
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop()


# ------------------------------------------------------------------ providers


@contextlib.contextmanager
def provide_postgres() -> Iterator[str]:
    """``TEST_DATABASE_URL`` if set (unchanged), else a throwaway server's URL."""
    url = _given_url("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with throwaway_postgres() as url:
        yield url


@contextlib.contextmanager
def provide_redis() -> Iterator[str]:
    """``TEST_REDIS_URL`` if set (unchanged), else a throwaway server's URL."""
    url = _given_url("TEST_REDIS_URL")
    if url:
        yield url
        return
    with throwaway_redis() as url:
        yield url


def _given_url(variable: str) -> str | None:
    """The server URL the environment names, refused under several pytest-xdist workers: they
    would share (and empty) each other's tables and streams."""
    url = os.environ.get(variable)
    if url and os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
        raise ServerStartError(
            f"{variable} is one server for every pytest-xdist worker; run with TEST_WORKERS=0 "
            f"(make test TEST_WORKERS=0) or unset it to give each worker throwaway servers"
        )
    return url


# ---------------------------------------------------------------- leftovers


def reap_orphans() -> None:
    """Stop and delete throwaway servers left by test processes that were killed."""
    base = _base_tmpdir()
    for prefix in (_PG_PREFIX, _REDIS_PREFIX):
        for entry in glob.glob(os.path.join(base, prefix + "*")):
            tmpdir = Path(entry)
            owner = _read_pid(tmpdir / _OWNER_FILE)
            if owner is None or owner == os.getpid() or _pid_alive(owner):
                continue
            try:
                if prefix == _PG_PREFIX:
                    pg_ctl = None
                    with contextlib.suppress(ServerStartError):
                        pg_ctl = find_pg_bindir() / "pg_ctl"
                    user = None
                    if os.geteuid() == 0:
                        st = tmpdir.stat()
                        user = pwd.getpwuid(st.st_uid) if st.st_uid != 0 else None
                    _stop_postgres(pg_ctl, tmpdir / "data", _run_kwargs(user, tmpdir))
                else:
                    pid = _read_pid(tmpdir / _SERVER_PID_FILE)
                    if pid is not None and _pid_alive(pid) and "redis-server" in _cmdline(pid):
                        os.kill(pid, signal.SIGKILL)
            except (OSError, KeyError, subprocess.SubprocessError):
                continue
            shutil.rmtree(tmpdir, ignore_errors=True)
