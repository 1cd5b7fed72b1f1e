"""The reference x402 Python SDK (PyPI `x402`) pays a gateway route on the devnet, used
as its documentation says, with nothing patched."""

from __future__ import annotations

import pytest
from eth_account import Account
from x402 import x402Client
from x402.http import x402HTTPClient
from x402.http.clients import x402HttpxClient
from x402.http.utils import decode_payment_response_header, encode_payment_signature_header
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from chains.payments import PaymentStore
from tests.gateway.x402_support import PRICE, token_balance, x402_config


pytestmark = pytest.mark.usefixtures("settler_key")


def reference_client(devnet, payer) -> x402Client:
    client = x402Client()
    client.register(devnet.network, ExactEvmScheme(EthAccountSigner(Account.from_key(
        payer.private_key))))
    # The SDK pays only well-known tokens unless told otherwise: allow the test USDC.
    client.set_spend_controls({"allowed_assets": [
        {"network": devnet.network, "asset": devnet.token_address}]})
    return client


async def test_reference_v2_client_pays_unchanged(gateway, origin, evm_devnet):
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url))
    payer = evm_devnet.payers[0]
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    payer_before = token_balance(evm_devnet, payer.address)
    async with x402HttpxClient(reference_client(evm_devnet, payer), timeout=30) as http:
        resp = await http.get(g.url + "/sky/v1/flights?from=ZRH")
    assert resp.status_code == 200, resp.text
    assert resp.json()["query_string"] == "from=ZRH"  # the origin's answer
    receipt = decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"])
    assert receipt.success is True
    assert receipt.transaction.startswith("0x") and len(receipt.transaction) == 66
    assert receipt.network == evm_devnet.network
    assert receipt.payer == payer.address
    mined = evm_devnet.request("eth_getTransactionReceipt", [receipt.transaction])
    assert int(mined["status"], 16) == 1
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    assert token_balance(evm_devnet, payer.address) == payer_before - PRICE
    (seen,) = o.requests
    assert seen.headers["X-Tollgate-Payer"] == payer.address
    assert await PaymentStore(g.gw.engine, g.gw.clock).counts() == {"settled": 1}


async def test_reference_v1_payload_as_x_payment(gateway, origin, http, evm_devnet):
    """A v1 `X-PAYMENT` built from the SDK's v1 types. The SDK's v1 EVM scheme signs only
    for its fixed list of named networks (anvil's chain has no v1 name), so the inner
    authorization is signed by its v2 scheme; the envelope is the SDK's PaymentPayloadV1."""
    o = await origin()
    g = await gateway(x402_config(evm_devnet, o.url))
    payer = evm_devnet.payers[1]
    async with http.get(g.url + "/sky/v1/flights") as r:
        assert r.status == 402
        body = await r.json()
    v1_req = PaymentRequirementsV1.model_validate(body["accepts"][0])  # the v1 fields parse
    assert v1_req.max_amount_required == str(PRICE)
    v2_req = PaymentRequirements(
        scheme=v1_req.scheme, network=v1_req.network, asset=v1_req.asset,
        amount=v1_req.max_amount_required, pay_to=v1_req.pay_to,
        max_timeout_seconds=v1_req.max_timeout_seconds, extra=v1_req.extra)
    inner = ExactEvmScheme(EthAccountSigner(Account.from_key(payer.private_key))) \
        .create_payment_payload(v2_req)
    envelope = PaymentPayloadV1(scheme=v1_req.scheme, network=v1_req.network, payload=inner)
    headers = x402HTTPClient(x402Client()).encode_payment_signature_header(envelope)
    assert list(headers) == ["X-PAYMENT"]
    assert headers["X-PAYMENT"] == encode_payment_signature_header(envelope)
    merchant_before = token_balance(evm_devnet, evm_devnet.merchant.address)
    async with http.get(g.url + "/sky/v1/flights", headers=headers) as r:
        assert r.status == 200, await r.text()
        receipt = decode_payment_response_header(r.headers["X-PAYMENT-RESPONSE"])
    assert receipt.success is True and receipt.transaction.startswith("0x")
    assert token_balance(evm_devnet, evm_devnet.merchant.address) == merchant_before + PRICE
    assert len(o.requests) == 1
