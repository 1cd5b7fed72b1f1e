"""A real, throwaway PostgreSQL server for tests.

    from tests.support.postgres import start_postgres

    with start_postgres() as pg:
        engine = create_async_engine(pg.url)   # postgresql+asyncpg://postgres@127.0.0.1:<port>/<db>
        ...                                    # pg.dsn is the plain postgresql:// form

Contract:

* The server binaries come from the newest ``/usr/lib/postgresql/<version>/bin``
  (Debian layout; the ``postgresql`` apt package) or, failing that, from the
  directory holding ``initdb`` on PATH. ``PostgresUnavailable`` says what to
  install when they are missing.
* Everything lives in one fresh temporary directory: the cluster (``initdb``,
  superuser ``postgres``, trust auth, UTF8, C locale), the unix socket and the
  server log. The server listens on a free port on 127.0.0.1 only and runs with
  durability switched off (fsync etc.), which is fine for tests only.
* PostgreSQL refuses to run as root, so when this process is root every server
  program runs as the ``postgres`` OS user, which owns the temporary directory.
* ``start_postgres`` returns only once the server accepts connections and the
  database exists, or raises ``PostgresStartError`` (with the server log) when
  that does not happen within ``timeout`` seconds.
* ``stop()`` (also on context exit and at interpreter exit) shuts the server down
  and deletes the directory; calling it again does nothing.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PostgresServer", "PostgresStartError", "PostgresUnavailable", "find_bin_dir",
           "start_postgres"]

APT_PACKAGE = "postgresql"
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "postgres"
REQUIRED_PROGRAMS = ("initdb", "postgres", "pg_isready", "createdb")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server programs (or the OS user to run them) are missing."""


class PostgresStartError(RuntimeError):
    """The server did not come up; the message includes its log."""


def _version_key(bin_dir: str) -> tuple[int, ...]:
    version = Path(bin_dir).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)


def find_bin_dir() -> Path:
    """Directory with initdb/postgres/pg_isready/createdb, newest version first."""
    candidates = sorted(glob.glob(DEBIAN_BIN_GLOB), key=_version_key, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if all(os.access(Path(candidate, p), os.X_OK) for p in REQUIRED_PROGRAMS):
            return Path(candidate)
    raise PostgresUnavailable(
        f"PostgreSQL server binaries not found (looked in {DEBIAN_BIN_GLOB} and PATH); "
        f"install them with: apt-get install -y {APT_PACKAGE}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _RunAs:
    """How to launch server programs: as ourselves, or as ``postgres`` when root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_current_process(cls) -> "_RunAs":
        if os.geteuid() != 0:
            return cls()
        try:
            pw = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root but there is no '{SUPERUSER}' OS user to run the server; "
                f"installing the {APT_PACKAGE} apt package creates it"
            ) from None
        return cls(pw.pw_uid, pw.pw_gid)

    def popen_kwargs(self) -> dict:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)


@dataclass
class PostgresServer:
    """A running server; see the module docstring for the contract."""

    host: str
    port: int
    database: str
    user: str
    base_dir: Path
    bin_dir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL for the asyncpg driver."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{self.database}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down (fast shutdown, then kill) and delete its files."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        atexit.unregister(self.stop)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def halt(self, timeout: float = 30.0) -> None:
        """Stop the server ("fast" shutdown: clients are disconnected) but keep its data,
        so that `resume()` brings the same cluster back on the same port."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout)

    def resume(self, timeout: float = 60.0) -> None:
        """Start the halted server again; returns once it accepts connections."""
        run_as = _RunAs.for_current_process()
        _launch(self, run_as, self.base_dir / "data")
        if not _wait_ready(self, run_as, time.monotonic() + timeout):
            raise PostgresStartError(f"PostgreSQL did not come back:\n{self.log()}")

    def __enter__(self) -> "PostgresServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _env(home: Path) -> dict[str, str]:
    # No inherited PG* variables: they would redirect the client programs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"LC_ALL": "C", "LANG": "C", "HOME": str(home)})
    return env


def _run(args: list[str], run_as: _RunAs, base: Path, timeout: float) -> None:
    result = subprocess.run(args, cwd=base, env=_env(base), capture_output=True, text=True,
                            timeout=timeout, **run_as.popen_kwargs())
    if result.returncode != 0:
        raise PostgresStartError(
            f"{Path(args[0]).name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


def _launch(server: PostgresServer, run_as: _RunAs, data_dir: Path) -> None:
    log = open(server.log_path, "wb")  # one log per attempt
    try:
        server.process = subprocess.Popen(
            [str(server.bin_dir / "postgres"), "-D", str(data_dir), "-p", str(server.port),
             "-k", str(server.socket_dir), "-c", f"listen_addresses={server.host}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            cwd=server.base_dir, env=_env(server.base_dir), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            **run_as.popen_kwargs(),
        )
    finally:
        log.close()


def _wait_ready(server: PostgresServer, run_as: _RunAs, deadline: float) -> bool:
    """True once pg_isready succeeds; False if the server exited or time ran out."""
    isready = [str(server.bin_dir / "pg_isready"), "-q", "-h", server.host,
               "-p", str(server.port), "-U", server.user, "-d", "postgres", "-t", "2"]
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        status = subprocess.run(isready, cwd=server.base_dir, env=_env(server.base_dir),
                                capture_output=True, **run_as.popen_kwargs()).returncode
        if status == 0:
            return True
        time.sleep(0.05)
    return False


def start_postgres(database: str = "tollgate", timeout: float = 60.0) -> PostgresServer:
    """Start a fresh server with an empty ``database``; see the module docstring."""
    bin_dir = find_bin_dir()
    run_as = _RunAs.for_current_process()
    base = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
    run_as.chown(base)
    data_dir = base / "data"
    server = PostgresServer(host="127.0.0.1", port=0, database=database, user=SUPERUSER,
                            base_dir=base, bin_dir=bin_dir)
    atexit.register(server.stop)
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "--auth=trust",
              "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
             run_as, base, timeout)
        for _attempt in range(3):  # the free port can be taken before the server binds it
            server.port = _free_port()
            _launch(server, run_as, data_dir)
            deadline = time.monotonic() + timeout
            if _wait_ready(server, run_as, deadline):
                break
            address_in_use = "already in use" in server.log()
            if server.process.poll() is None:
                raise PostgresStartError(
                    f"PostgreSQL did not accept connections within {timeout} s:\n{server.log()}")
            if not address_in_use:
                raise PostgresStartError(f"PostgreSQL exited during startup:\n{server.log()}")
        else:
            raise PostgresStartError(f"no free port for PostgreSQL:\n{server.log()}")
        _run([str(bin_dir / "createdb"), "-h", server.host, "-p", str(server.port),
              "-U", SUPERUSER, database], run_as, base, timeout)
    except BaseException:
        server.stop()
        raise
    return server
