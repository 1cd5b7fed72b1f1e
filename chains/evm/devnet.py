"""A throwaway local EVM chain: anvil + a deployed TestUSDC with funded payers.

``EvmDevnet.start()`` launches ``node_modules/.bin/anvil`` on a free 127.0.0.1 port, waits
(bounded) until it answers, deploys TestUSDC from the committed artifact
(``chains/evm/build/TestUSDC.json``) with raw JSON-RPC, and mints USDC to the payer accounts.
``stop()`` (also run by the context manager and at interpreter exit) kills anvil.

Accounts come from anvil's well-known dev mnemonic, derived here with eth_account, each with a
role: ``deployer`` (token owner), ``settler`` (pays gas for settlements), ``merchant`` (payTo),
``payers`` (hold USDC) and ``poor`` (holds no USDC). All have dev ETH. These keys are public
knowledge: never use them outside a local devnet.

Run ``python -m chains.evm.devnet`` to keep one in the foreground and print its details.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
ANVIL = REPO_ROOT / "node_modules" / ".bin" / "anvil"
CONTRACT_SOURCE = Path(__file__).resolve().parent / "contracts" / "TestUSDC.sol"
ARTIFACT = Path(__file__).resolve().parent / "build" / "TestUSDC.json"
# The batch settlement contract, deployed next to the token (the gateway's `batch_contract`).
BATCH_SOURCE = Path(__file__).resolve().parent / "contracts" / "SettlementBatch.sol"
BATCH_ARTIFACT = Path(__file__).resolve().parent / "build" / "SettlementBatch.json"

ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
USDC = 10**6  # atomic units per USDC
DEFAULT_MINT = 1_000 * USDC

__all__ = ["EvmDevnet", "DevAccount", "DevnetError", "load_artifact", "USDC", "ANVIL_MNEMONIC"]


class DevnetError(RuntimeError):
    """The devnet could not be started or set up."""


@dataclass(frozen=True)
class DevAccount:
    role: str
    address: str  # checksummed
    private_key: str  # 0x-hex


def load_artifact(path: Path = ARTIFACT, source: Path = CONTRACT_SOURCE) -> dict:
    """The compiled TestUSDC artifact, refusing one that does not match the current source."""
    compile_hint = "run `node chains/evm/compile.mjs` from the repository root"
    if not path.exists():
        raise DevnetError(f"missing contract artifact {path.name}: {compile_hint}")
    artifact = json.loads(path.read_text())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if artifact.get("sourceSha256") != digest:
        raise DevnetError(f"{path.name} is stale ({source.name} changed): {compile_hint}")
    return artifact


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Linux only: have the kernel SIGTERM anvil if this Python process dies without cleanup
    # (SIGKILL, crash), so no orphan keeps a port and a CPU.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class EvmDevnet:
    """Local anvil chain with TestUSDC deployed; see the module docstring.

    Options: ``block_time`` seconds between blocks (None = mine each transaction at once),
    ``gas_limit`` per block (None = anvil's default), ``payers`` how many funded payers,
    ``mint_amount`` USDC atomic units minted to each payer, ``port`` (None = a free one).
    """

    def __init__(
        self,
        *,
        block_time: float | None = None,
        gas_limit: int | None = None,
        payers: int = 3,
        mint_amount: int = DEFAULT_MINT,
        token_name: str = "USD Coin",
        token_version: str = "2",
        chain_id: int = 31337,
        port: int | None = None,
        start_timeout: float = 15.0,
        anvil_path: Path | str | None = None,
    ):
        if payers < 1:
            raise ValueError("need at least one payer")
        self.block_time = block_time
        self.gas_limit = gas_limit
        self.mint_amount = mint_amount
        self.token_name = token_name
        self.token_version = token_version
        self.chain_id = chain_id
        self.start_timeout = start_timeout
        self._requested_port = port
        self._anvil = Path(anvil_path) if anvil_path else ANVIL
        self._proc: subprocess.Popen | None = None
        self._http: httpx.Client | None = None
        self._log: Any = None  # anvil's stderr, read back when it fails to start
        self._ids = 0
        self.port: int | None = None
        self.token_address: str | None = None
        self.batch_address: str | None = None  # the SettlementBatch contract
        self.ready_block: int | None = None  # block at which set-up (deploy + mints) was done

        accounts = _derive_accounts(3 + payers + 1)
        self.deployer = DevAccount("deployer", *accounts[0])
        self.settler = DevAccount("settler", *accounts[1])
        self.merchant = DevAccount("merchant", *accounts[2])
        self.payers = [DevAccount(f"payer{i}", *accounts[3 + i]) for i in range(payers)]
        self.poor = DevAccount("poor", *accounts[3 + payers])

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, **options: Any) -> "EvmDevnet":
        """Create, launch and set up a devnet (see __init__ for options)."""
        devnet = cls(**options)
        devnet.launch()
        return devnet

    def launch(self) -> None:
        """Start anvil, deploy the token and fund payers. Stops anvil again on any failure."""
        if self._proc is not None:
            raise DevnetError("devnet already running")
        if not self._anvil.exists():
            raise DevnetError(f"anvil not found at {self._anvil}: run `make` (or `npm ci`) in the repository root")
        artifact = load_artifact()
        atexit.register(self.stop)
        try:
            self._spawn_anvil()
            self.token_address = self._deploy(artifact)
            self.batch_address = self._deploy_batch()
            self._mint_all()
            self.ready_block = int(self.request("eth_blockNumber"), 16)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill anvil (idempotent). The chain's state is gone afterwards."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "EvmDevnet":
        if self._proc is None:
            self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ info

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise DevnetError("devnet not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def network(self) -> str:
        """CAIP-2 id, as x402 v2 names the chain."""
        return f"eip155:{self.chain_id}"

    def accounts(self) -> list[DevAccount]:
        return [self.deployer, self.settler, self.merchant, *self.payers, self.poor]

    def describe(self) -> dict:
        """Everything a person or a config file needs to use this devnet (keys included)."""
        return {
            "rpc_url": self.rpc_url,
            "chain_id": self.chain_id,
            "network": self.network,
            "block_time": self.block_time,
            "token": {
                "address": self.token_address,
                "name": self.token_name,
                "version": self.token_version,
                "symbol": "USDC",
                "decimals": 6,
            },
            "batch_contract": self.batch_address,
            "mint_amount": self.mint_amount,
            "accounts": {
                "deployer": asdict(self.deployer),
                "settler": asdict(self.settler),
                "merchant": asdict(self.merchant),
                "payers": [asdict(p) for p in self.payers],
                "poor": asdict(self.poor),
            },
            "mnemonic": ANVIL_MNEMONIC,
        }

    # ------------------------------------------------------------ sync JSON-RPC

    def request(self, method: str, params: list | tuple = ()) -> Any:
        """Synchronous JSON-RPC call (for set-up and test control: evm_mine, evm_setAutomine...)."""
        if self._http is None:
            raise DevnetError("devnet not started")
        self._ids += 1
        response = self._http.post(
            self.rpc_url, json={"jsonrpc": "2.0", "id": self._ids, "method": method, "params": list(params)}
        )
        payload = response.json()
        if payload.get("error"):
            raise DevnetError(f"{method}: {payload['error']}")
        return payload["result"]

    def mint(self, to: str, amount: int, token: str | None = None) -> str:
        """Mint ``amount`` atomic units of ``token`` (default: the devnet's TestUSDC) to ``to``
        (as the deployer); waits for the receipt."""
        from eth_abi import encode

        from chains.evm.rpc import selector

        data = selector("mint(address,uint256)") + encode(["address", "uint256"], [_checksum(to), amount])
        tx_hash = self._send(self.deployer, data, to=token or self.token_address)
        self._wait_receipt(tx_hash)
        return tx_hash

    # ------------------------------------------------------------ internals

    def _spawn_anvil(self) -> None:
        # A free port can be taken between probing and anvil binding it: retry a few times.
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            self.port = self._requested_port or _free_port()
            args = [
                str(self._anvil),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--chain-id", str(self.chain_id),
                "--mnemonic", ANVIL_MNEMONIC,
                "--accounts", str(len(self.accounts())),
                "--quiet",
            ]  # fmt: skip
            if self.block_time is not None:
                args += ["--block-time", str(self.block_time)]
            if self.gas_limit is not None:
                args += ["--gas-limit", str(self.gas_limit)]
            # stderr goes to a file, not a pipe nobody drains (a full pipe would block anvil).
            self._log = log = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us, and we stop anvil ourselves
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            self._http = httpx.Client(timeout=httpx.Timeout(5.0, connect=1.0))
            if self._wait_ready():
                return
            log.seek(0)
            output = log.read().decode(errors="replace").strip()
            self.stop()
            if attempt + 1 == attempts or "in use" not in output.lower():
                raise DevnetError(f"anvil did not start on 127.0.0.1:{self.port}: {output or 'no output'}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                if int(self.request("eth_chainId"), 16) == self.chain_id:
                    return True
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.02)
        return False

    def _receipt_timeout(self) -> float:
        return 10.0 + 3 * (self.block_time or 0)

    def _send(self, account: DevAccount, data: bytes, *, to: str | None) -> str:
        from eth_account import Account

        tx: dict[str, Any] = {"from": account.address, "data": "0x" + data.hex()}
        if to is not None:
            tx["to"] = to
        gas = int(self.request("eth_estimateGas", [tx]), 16)
        base_fee = int(self.request("eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
        tip = int(self.request("eth_maxPriorityFeePerGas"), 16)
        nonce = int(self.request("eth_getTransactionCount", [account.address, "pending"]), 16)
        unsigned = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": nonce,
            "value": 0,
            "data": data,
            "gas": gas + gas // 4,
            "maxFeePerGas": 2 * base_fee + tip,
            "maxPriorityFeePerGas": tip,
        }
        if to is not None:
            unsigned["to"] = to
        signed = Account.sign_transaction(unsigned, account.private_key)
        return self.request("eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()])

    def _wait_receipt(self, tx_hash: str) -> dict:
        deadline = time.monotonic() + self._receipt_timeout()
        while time.monotonic() < deadline:
            receipt = self.request("eth_getTransactionReceipt", [tx_hash])
            if receipt:
                if int(receipt["status"], 16) != 1:
                    raise DevnetError(f"devnet set-up transaction {tx_hash} reverted")
                return receipt
            time.sleep(0.02)
        raise DevnetError(f"devnet set-up transaction {tx_hash} not mined in {self._receipt_timeout():g}s")

    def deploy_token(self, name: str, version: str, decimals: int) -> str:
        """Deploy another EIP-3009 test token (same contract, its own name, version and
        decimals), owned by the deployer; returns its checksummed address."""
        return self._deploy(load_artifact(), name, version, decimals)

    def _deploy(self, artifact: dict, name: str | None = None, version: str | None = None,
                decimals: int = 6) -> str:
        from eth_abi import encode

        bytecode = bytes.fromhex(artifact["bytecode"].removeprefix("0x"))
        data = bytecode + encode(["string", "string", "uint8"],
                                 [name or self.token_name, version or self.token_version, decimals])
        receipt = self._wait_receipt(self._send(self.deployer, data, to=None))
        return _checksum(receipt["contractAddress"])

    def _deploy_batch(self) -> str:
        """Deploy SettlementBatch (no constructor arguments); its checksummed address."""
        artifact = load_artifact(BATCH_ARTIFACT, BATCH_SOURCE)
        bytecode = bytes.fromhex(artifact["bytecode"].removeprefix("0x"))
        receipt = self._wait_receipt(self._send(self.deployer, bytecode, to=None))
        return _checksum(receipt["contractAddress"])

    def _mint_all(self) -> None:
        for payer in self.payers:
            self.mint(payer.address, self.mint_amount)


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def _derive_accounts(count: int) -> list[tuple[str, str]]:
    """(address, 0x-private-key) for anvil's mnemonic at m/44'/60'/0'/0/i, as anvil derives them."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    out = []
    for i in range(count):
        acct = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        out.append((acct.address, "0x" + bytes(acct.key).hex()))
    return out


def _print_human(info: dict) -> None:
    token = info["token"]
    print(f"EVM devnet (anvil) at {info['rpc_url']}  chain id {info['chain_id']} ({info['network']})")
    print(f"token  {token['address']}  {token['name']!r} version {token['version']!r}, {token['decimals']} decimals")
    if info.get("batch_contract"):
        print(f"batch  {info['batch_contract']}  SettlementBatch (config: batch_contract)")
    print(f"each payer holds {info['mint_amount']} atomic units ({info['mint_amount'] / USDC:g} USDC)")
    print("accounts (dev keys, public knowledge: local use only):")
    accounts = info["accounts"]
    rows = [accounts["deployer"], accounts["settler"], accounts["merchant"], *accounts["payers"], accounts["poor"]]
    for acct in rows:
        print(f"  {acct['role']:<9} {acct['address']}  {acct['private_key']}")
    print("Ctrl-C to stop.", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chains.evm.devnet", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--block-time", type=float, default=None, help="seconds per block (default: automine)")
    parser.add_argument("--gas-limit", type=int, default=None, help="block gas limit")
    parser.add_argument("--payers", type=int, default=3, help="number of funded payers")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    try:
        # Everything after start sits inside the try: a signal can land anywhere, even mid-print.
        with EvmDevnet.start(
            port=args.port, block_time=args.block_time, gas_limit=args.gas_limit, payers=args.payers
        ) as devnet:
            if args.json:
                print(json.dumps(devnet.describe(), indent=2), flush=True)
            else:
                _print_human(devnet.describe())
            while devnet.running:
                time.sleep(0.5)
            print("anvil exited unexpectedly", file=sys.stderr)
            return 1
    except DevnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
