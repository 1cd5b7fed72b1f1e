"""The committed contract artifacts must be exactly what their sources compile to."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chains.evm.devnet import ARTIFACT, BATCH_ARTIFACT, BATCH_SOURCE, CONTRACT_SOURCE, load_artifact

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("artifact_path,source", [(ARTIFACT, CONTRACT_SOURCE), (BATCH_ARTIFACT, BATCH_SOURCE)])
def test_artifact_hash_matches_source(artifact_path, source):
    artifact = json.loads(artifact_path.read_text())
    assert artifact["sourceSha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    load_artifact(artifact_path, source)  # the devnet's own staleness check agrees


@pytest.mark.skipif(
    shutil.which("node") is None or not (REPO_ROOT / "node_modules" / "solc").exists(),
    reason="node or npm solc missing (run npm ci)",
)
@pytest.mark.parametrize("name,artifact_path", [("TestUSDC", ARTIFACT), ("SettlementBatch", BATCH_ARTIFACT)])
def test_recompiling_reproduces_the_committed_artifact(name, artifact_path):
    fresh = subprocess.run(
        ["node", str(REPO_ROOT / "chains" / "evm" / "compile.mjs"), "--stdout", name],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert fresh == artifact_path.read_text()


def test_stale_artifact_is_refused(tmp_path):
    source = tmp_path / "TestUSDC.sol"
    source.write_bytes(CONTRACT_SOURCE.read_bytes() + b"\n// edited\n")
    from chains.evm.devnet import DevnetError

    with pytest.raises(DevnetError, match="stale"):
        load_artifact(ARTIFACT, source)
