"""Several real `tollgate serve` processes on one database, for the operations tests.

    async with Cluster(config, db_url, tmp_path, instances=3) as cluster:
        cluster.urls                      # one base URL per process
        cluster.url(i)                    # the i-th (modulo), so a test spreads calls itself
        cluster.logs()                    # everything the processes wrote so far

Each process gets the same TOML config (written from a dict), the same database and the
same master key file, and the test's environment (so monkeypatched key variables reach
it). `ready()` waits until every process answers its `/readyz`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
from sqlalchemy import text

from store import migrations
from store.db import create_engine_unpooled
from tests.gateway.test_x402_settlement_kill import free_port, to_toml

REPO = Path(__file__).resolve().parents[2]
NET_WAIT = 60.0  # bound on any wait (a loaded machine starts processes slowly); never a pass criterion


async def fresh_database(server) -> str:
    """A new, migrated database on the PostgreSQL `server`; its SQLAlchemy URL."""
    name = "ops_" + uuid.uuid4().hex[:12]
    admin = create_engine_unpooled(server.url)
    async with admin.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = server.url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine_unpooled(url)
    try:
        await migrations.migrate(engine)
    finally:
        await engine.dispose()
    return url


class Instance:
    """One `python -m gateway serve` process."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "-c", str(config_path),
             "--port", str(self.port)],
            cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)} | env,
            stdout=self._log, stderr=self._log)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession) -> None:
        async with asyncio.timeout(NET_WAIT):
            while True:
                assert self.proc.poll() is None, f"the gateway exited:\n{self.log()}"
                try:
                    async with http.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
                await asyncio.sleep(0.1)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def exited(self) -> int:
        async with asyncio.timeout(NET_WAIT):
            while self.proc.poll() is None:
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=NET_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    def __init__(self, config: dict, db_url: str, tmp_path: Path, *, instances: int = 3,
                 env: dict[str, str] | None = None) -> None:
        config = dict(config)
        config["server"] = {"allow_private_targets": True, **config.get("server", {})}
        config["database"] = {"url": db_url, "master_key_env": "TOLLGATE_TEST_UNSET_MASTER",
                              "master_key_file": str(tmp_path / "master.key")}
        self.config_path = tmp_path / "tollgate.toml"
        self.config_path.write_text(to_toml(config))
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.env = env or {}
        self.count = instances
        self.instances: list[Instance] = []
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=NET_WAIT))

    async def __aenter__(self) -> "Cluster":
        try:
            for i in range(self.count):
                self.instances.append(
                    Instance(self.config_path, self.tmp_path / f"gateway-{i}.log", self.env))
            for inst in self.instances:
                await inst.ready(self.http)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        for inst in self.instances:
            inst.stop()
        await self.http.close()

    @property
    def urls(self) -> list[str]:
        return [i.url for i in self.instances]

    def url(self, i: int) -> str:
        return self.instances[i % len(self.instances)].url

    def logs(self) -> str:
        return "\n".join(i.log() for i in self.instances)
