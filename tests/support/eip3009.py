"""EIP-3009's typed-data types, written out once for tests that sign with eth_account
(independently of the gateway's own EIP-712 code)."""

AUTH_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]

TRANSFER_TYPES = {"TransferWithAuthorization": AUTH_FIELDS}
