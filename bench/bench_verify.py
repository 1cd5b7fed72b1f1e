"""Verifications per second: Tollgate's verify_exact_evm vs eth_account recovery.

Usage: python bench/bench_verify.py [--n N]

* tollgate: parse the wire payload + verify_exact_evm (all pure checks, cached
  domain separator, keccak digest, coincurve recovery, checksum compare); once
  with one repeat payer, once with a new payer per payment (cold address cache).
* eth_account: encode_typed_data + Account.recover_message only (no other checks).
Each path is run over N distinct signed payments; best of 3 rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chains.evm.eip712 import _checksum  # noqa: E402
from chains.evm.codec import build_exact_evm_payload, parse_exact_evm_payload  # noqa: E402
from chains.evm.verify import verify_exact_evm  # noqa: E402
from chains.x402 import PaymentRequirements  # noqa: E402

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
REQ = PaymentRequirements(
    scheme="exact",
    network="eip155:31337",
    amount="1000",
    asset="0x5FbDB2315678afecb367f032d93F642f64180aa3",
    payTo="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    maxTimeoutSeconds=60,
    extra={"name": "USD Coin", "version": "2"},
)
TYPES = {
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ]
}


def best_rate(fn, items, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    now = int(time.time())
    wires = [build_exact_evm_payload(KEY, REQ, now=now, nonce=os.urandom(32)).to_wire() for _ in range(n)]

    def tollgate(w: dict) -> None:
        verify_exact_evm(parse_exact_evm_payload(w), REQ, 31337, now)

    def tollgate_verify_only(p) -> None:
        verify_exact_evm(p, REQ, 31337, now)

    t0 = time.perf_counter()
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    import_s = time.perf_counter() - t0
    domain = {"name": "USD Coin", "version": "2", "chainId": 31337, "verifyingContract": REQ.asset}

    def eth_account_path(w: dict) -> None:
        a = w["authorization"]
        msg = {
            "from": a["from"],
            "to": a["to"],
            "value": int(a["value"]),
            "validAfter": int(a["validAfter"]),
            "validBefore": int(a["validBefore"]),
            "nonce": bytes.fromhex(a["nonce"][2:]),
        }
        signable = encode_typed_data(domain_data=domain, message_types=TYPES, message_data=msg)
        assert Account.recover_message(signable, signature=bytes.fromhex(w["signature"][2:])) == a["from"]

    parsed = [parse_exact_evm_payload(w) for w in wires]
    r_full = best_rate(tollgate, wires)
    # Every payment from a different payer, address checksum cache cleared each round.
    keys = [os.urandom(32) for _ in range(n)]
    cold = [build_exact_evm_payload(k, REQ, now=now).to_wire() for k in keys]

    def cold_round(items: list) -> None:
        _checksum.cache_clear()
        for w in items:
            tollgate(w)

    r_cold = best_rate(cold_round, [cold]) * n
    r_verify = best_rate(tollgate_verify_only, parsed)
    r_eth = best_rate(eth_account_path, wires[: max(1, n // 4)])
    print(f"payments: {n}, python {sys.version.split()[0]}")
    print(f"tollgate parse+verify_exact_evm : {r_full:9.0f}/s  ({1e6 / r_full:6.1f} us each)")
    print(f"tollgate parse+verify, new payers: {r_cold:9.0f}/s  ({1e6 / r_cold:6.1f} us each)")
    print(f"tollgate verify_exact_evm only  : {r_verify:9.0f}/s  ({1e6 / r_verify:6.1f} us each)")
    print(f"eth_account typed-data recover  : {r_eth:9.0f}/s  ({1e6 / r_eth:6.1f} us each)")
    print(f"ratio tollgate(parse+verify) / eth_account: {r_full / r_eth:.1f}x")
    print(f"(import eth_account: {import_s * 1000:.0f} ms, not needed by the tollgate path)")


if __name__ == "__main__":
    main()
