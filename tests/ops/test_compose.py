"""The shipped docker-compose.yml, Dockerfile, deploy/tollgate.toml and .env.example fit
together: everything the compose file references exists, the config it mounts is valid,
and every secret the config names comes from the environment. Docker is not needed;
where it is installed, `docker compose config` must accept the file too."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CONTAINER_CONFIG = "/etc/tollgate/tollgate.toml"


def env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            out[name.strip()] = value.strip()
    return out


def mounts(service: dict) -> dict[str, str]:
    """container path -> source (host path or volume name) of a service's volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def shipped_config():
    source = mounts(SERVICES["gateway"])[CONTAINER_CONFIG]
    assert source.startswith("./"), "the gateway's config must be a shipped file"
    return load_config(REPO / source)


def test_services_and_what_they_build_exist():
    assert {"postgres", "migrate", "gateway"} <= set(SERVICES)
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert (REPO / svc["build"] / "Dockerfile").is_file(), name
        else:
            assert "image" in svc, name
        for target, source in mounts(svc).items():
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE.get("volumes", {}), f"{name}: undeclared volume {source}"
        for env_file in ([svc["env_file"]] if isinstance(svc.get("env_file"), str)
                         else svc.get("env_file", [])):
            # .env is the operator's copy of the shipped example
            assert env_file == ".env" and (REPO / ".env.example").is_file()


def test_both_services_have_healthchecks_and_the_gateway_waits_for_the_database():
    for name in ("postgres", "gateway"):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
    cfg = shipped_config()
    probe = " ".join(SERVICES["gateway"]["healthcheck"]["test"])
    assert f"127.0.0.1:{cfg.server.port}/readyz" in probe  # ready = the store answers
    deps = SERVICES["gateway"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["command"][0] == "migrate"
    grace = cfg.server.shutdown_grace_seconds
    assert float(SERVICES["gateway"]["stop_grace_period"].rstrip("s")) > grace


def test_the_config_fits_the_compose_network_and_ports():
    cfg = shipped_config()
    assert cfg.server.host == "0.0.0.0"
    published = {p.rsplit(":", 1)[-1]: p for p in SERVICES["gateway"]["ports"]}
    assert str(cfg.server.port) in published
    assert cfg.metrics.enabled and str(cfg.metrics.port) in published
    assert published[str(cfg.metrics.port)].startswith("127.0.0.1:"), "metrics stay private"
    db = urlsplit(cfg.database.url.replace("postgresql+asyncpg", "postgresql"))
    pg_env = SERVICES["postgres"]["environment"]
    assert db.hostname == "postgres" and db.port in (None, 5432)
    assert db.username == pg_env["POSTGRES_USER"] and db.path == "/" + pg_env["POSTGRES_DB"]
    assert db.password == env_example()["POSTGRES_PASSWORD"]
    for pg in cfg.paygates:
        host = urlsplit(pg.target).hostname
        if host in SERVICES:
            assert "healthcheck" in SERVICES[host]
            assert SERVICES["gateway"]["depends_on"][host]["condition"] == "service_healthy"


def test_every_secret_comes_from_the_environment_the_example_names():
    cfg = shipped_config()
    names = {cfg.database.master_key_env}
    names |= {pg.origin_auth.secret_env for pg in cfg.paygates if pg.origin_auth.secret_env}
    for net in cfg.evm.values():
        names |= {n for n in (net.settler_key_env, net.facilitator_api_key_env) if n}
    if cfg.hedera:
        names.add(cfg.hedera.private_key_env)
    text = (REPO / "docker-compose.yml").read_text()
    names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    missing = names - set(env_example())
    assert not missing, f".env.example does not name {sorted(missing)}"


def test_the_master_key_survives_a_rebuild():
    """Unless it comes from the environment, the key file lives on a named volume, never
    in the container's own (rebuilt) filesystem."""
    cfg = shipped_config()
    key_dir = str(Path(cfg.database.master_key_file).parent)
    source = mounts(SERVICES["gateway"]).get(key_dir)
    assert source is not None and source in COMPOSE["volumes"], \
        f"{key_dir} is not on a named volume"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"chown tollgate:tollgate {key_dir}" in dockerfile  # the non-root user can write it


def test_the_dockerfile_builds_from_the_lock_as_a_non_root_user():
    text = (REPO / "Dockerfile").read_text()
    assert "-r requirements.lock" in text
    assert "npm ci" in text and "npm run --silent build" in text  # the wallet page's bundle
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".venv" in ignored


def _has_compose() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="docker compose is not installed")
def test_docker_compose_config_accepts_the_file(tmp_path):
    for name in ("docker-compose.yml", "Dockerfile", "deploy"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    (tmp_path / ".env").write_text((REPO / ".env.example").read_text())
    out = subprocess.run(["docker", "compose", "config", "--quiet"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
