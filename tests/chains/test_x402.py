"""x402 envelope: header codec, 402 bodies, payload parsing, selection, cross-checks with the reference SDK."""

from __future__ import annotations

import base64
import json
import time

import pytest

from chains import x402
from chains.evm.codec import build_exact_evm_payload
from chains.x402 import (
    PaymentRequirements,
    SettleResponse,
    VerifyResponse,
    X402Error,
    build_payment_payload,
    build_payment_required,
    decode_header,
    encode_header,
    encode_settle_response,
    normalize_network,
    parse_payment_header,
    parse_payment_payload,
    payment_identifier,
    payment_required_body,
    select_requirement,
)
from tests.support.requirements import MERCHANT, TOKEN, req

PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"




def b64(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


# --- header codec -----------------------------------------------------------------


def test_header_roundtrip_and_missing_padding():
    obj = {"a": 1, "b": "é"}
    enc = encode_header(obj)
    assert decode_header(enc) == obj
    assert decode_header(enc.rstrip("=")) == obj


@pytest.mark.parametrize("value", ["!!!notbase64", "abc$def", "YWJj-ZGVm_", "a"])
def test_header_bad_base64(value):
    with pytest.raises(X402Error) as e:
        decode_header(value)
    assert e.value.reason == x402.INVALID_PAYLOAD


def test_header_bad_json():
    with pytest.raises(X402Error) as e:
        decode_header(base64.b64encode(b"{not json").decode())
    assert e.value.reason == x402.INVALID_PAYLOAD


def test_header_deeply_nested_json():
    value = base64.b64encode(b"[" * 3000 + b"]" * 3000).decode()
    assert len(value) <= 8192
    with pytest.raises(X402Error) as e:
        decode_header(value)
    assert e.value.reason == x402.INVALID_PAYLOAD


def test_header_not_object():
    with pytest.raises(X402Error) as e:
        decode_header(b64([1, 2]))
    assert e.value.reason == x402.INVALID_PAYLOAD


def test_header_too_long():
    value = b64({"x": "a" * 7000})
    assert len(value) > 8192
    with pytest.raises(X402Error) as e:
        decode_header(value)
    assert e.value.reason == x402.INVALID_PAYLOAD
    assert decode_header(value, max_len=len(value))["x"]


def test_header_empty():
    with pytest.raises(X402Error) as e:
        decode_header("")
    assert e.value.reason == x402.INVALID_PAYLOAD


# --- networks ----------------------------------------------------------------------


def test_networks():
    assert normalize_network("base") == "eip155:8453"
    assert normalize_network("base-sepolia") == "eip155:84532"
    assert normalize_network("eip155:31337") == "eip155:31337"
    assert normalize_network("hedera:testnet") == "hedera:testnet"
    assert x402.v1_network_name("eip155:84532") == "base-sepolia"
    assert x402.v1_network_name("eip155:31337") == "eip155:31337"
    assert x402.evm_chain_id("avalanche") == 43114
    for bad in ("mainnet-ish", "eip155:0x1", "eip155:031337", "", "EIP155:1"):
        with pytest.raises(X402Error) as e:
            normalize_network(bad)
        assert e.value.reason == x402.INVALID_NETWORK
    with pytest.raises(X402Error):
        x402.evm_chain_id("hedera:testnet")


# --- models -------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1.5", "-1", "01", "", "1e3"])
def test_requirements_reject_bad_amount(amount):
    with pytest.raises(ValueError):
        req(amount=amount)


def test_requirements_reject_float_timeout():
    with pytest.raises(ValueError):
        req(maxTimeoutSeconds="60")


def test_to_v1_uses_v1_name_and_omits_null_output_schema():
    v1 = req(network="eip155:84532").to_v1("http://gw/r", "desc", "application/json")
    assert v1["network"] == "base-sepolia"
    assert v1["maxAmountRequired"] == "1000"
    assert v1["resource"] == "http://gw/r" and v1["mimeType"] == "application/json"
    assert "outputSchema" not in v1
    assert req().to_v1("u", "d", "m")["network"] == "eip155:31337"


def test_settle_and_verify_responses():
    ok = SettleResponse(success=True, transaction="0xab", network="eip155:31337", payer=MERCHANT)
    assert decode_header(encode_settle_response(ok)) == {
        "success": True,
        "transaction": "0xab",
        "network": "eip155:31337",
        "payer": MERCHANT,
    }
    bad = SettleResponse(success=False, network="eip155:31337", error_reason=x402.INSUFFICIENT_FUNDS)
    assert bad.to_wire() == {
        "success": False,
        "transaction": "",
        "network": "eip155:31337",
        "errorReason": "insufficient_funds",
    }
    assert VerifyResponse(is_valid=False, invalid_reason="invalid_scheme", payer=MERCHANT).to_wire() == {
        "isValid": False,
        "invalidReason": "invalid_scheme",
        "payer": MERCHANT,
    }


# --- payload parsing -----------------------------------------------------------------


def test_parse_v2():
    obj = build_payment_payload(req(), {"signature": "0x"}, resource={"url": "u"}, extensions={"k": {}})
    p = parse_payment_header(encode_header(obj))
    assert (p.version, p.scheme, p.network) == (2, "exact", "eip155:31337")
    assert p.accepted == req() and p.extensions == {"k": {}} and p.resource == {"url": "u"}
    assert p.raw and p.payload == {"signature": "0x"}


def test_parse_v1_and_legacy_version_echo():
    obj = {"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": {}}
    p = parse_payment_payload(obj)
    assert (p.version, p.accepted, p.network_id) == (1, None, "eip155:84532")
    p2 = parse_payment_payload({**obj, "x402Version": 2})
    assert p2.version == 1


@pytest.mark.parametrize("version", [0, 3, "2", True, None])
def test_parse_bad_version(version):
    with pytest.raises(X402Error) as e:
        parse_payment_payload({"x402Version": version, "scheme": "exact", "network": "base", "payload": {}})
    assert e.value.reason == x402.INVALID_X402_VERSION


@pytest.mark.parametrize(
    "obj",
    [
        {"x402Version": 2, "accepted": {"scheme": "exact"}, "payload": {}},
        {"x402Version": 2, "accepted": "x", "payload": {}},
        {"x402Version": 1, "scheme": "exact", "network": "base", "payload": "x"},
        {"x402Version": 1, "scheme": "exact", "payload": {}},
        {"x402Version": 1, "scheme": "exact", "network": "base", "payload": {}, "extensions": []},
    ],
)
def test_parse_malformed(obj):
    with pytest.raises(X402Error) as e:
        parse_payment_payload(obj)
    assert e.value.reason == x402.INVALID_PAYLOAD


# --- selection -------------------------------------------------------------------------


def _v2(accepted: PaymentRequirements):
    return parse_payment_payload(build_payment_payload(accepted, {}))


def test_select_v2_exact_match_ignores_address_case():
    offered = [req(amount="5"), req(), req(network="eip155:8453")]
    acc = req(asset=TOKEN.lower(), payTo=MERCHANT.upper().replace("0X", "0x"))
    assert select_requirement(_v2(acc), offered) is offered[1]


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"scheme": "upto"}, x402.INVALID_SCHEME),
        ({"network": "eip155:1"}, x402.INVALID_NETWORK),
        ({"network": "nonsense"}, x402.INVALID_NETWORK),
        ({"asset": "0x" + "11" * 20}, x402.INVALID_PAYMENT_REQUIREMENTS),
        ({"payTo": "0x" + "22" * 20}, x402.INVALID_PAYMENT_REQUIREMENTS),
        ({"amount": "999"}, x402.INVALID_PAYMENT_REQUIREMENTS),
        ({"extra": {"name": "USDC", "version": "2"}}, x402.INVALID_PAYMENT_REQUIREMENTS),
    ],
)
def test_select_v2_accepted_matching_no_offer(change, reason):
    with pytest.raises(X402Error) as e:
        select_requirement(_v2(req(**change)), [req()])
    assert e.value.reason == reason


def test_select_v1_by_scheme_and_network():
    offered = [req(network="eip155:84532")]
    p = parse_payment_payload({"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": {}})
    assert select_requirement(p, offered) is offered[0]
    p = parse_payment_payload({"x402Version": 1, "scheme": "exact", "network": "base", "payload": {}})
    with pytest.raises(X402Error) as e:
        select_requirement(p, offered)
    assert e.value.reason == x402.INVALID_NETWORK


# --- payment-identifier ------------------------------------------------------------------


def test_payment_identifier():
    assert payment_identifier({}) is None
    assert payment_identifier(None) is None
    assert payment_identifier({"payment-identifier": {"info": {"required": False}}}) is None
    pid = "pay_7d5d747be160e280504c099d984bcfe0"
    assert payment_identifier({"payment-identifier": {"info": {"required": True, "id": pid}}}) == pid
    for bad in ({"info": {"id": "short"}}, {"info": {"id": "x" * 20 + "!"}}, {"info": "x"}, "x", {"info": {"id": 5}}):
        with pytest.raises(X402Error) as e:
            payment_identifier({"payment-identifier": bad})
        assert e.value.reason == x402.INVALID_PAYMENT_IDENTIFIER


# --- cross-checks with the reference x402 package -------------------------------------------


def test_reference_parses_our_challenge_header_and_body():
    from x402.http.utils import decode_payment_required_header
    from x402.schemas import PaymentRequired
    from x402.schemas.v1 import PaymentRequirementsV1

    accepts = [req(), req(network="eip155:84532")]
    header = encode_header(build_payment_required("http://gw/r", "desc", "application/json", accepts, {}))
    parsed = decode_payment_required_header(header)
    assert isinstance(parsed, PaymentRequired)
    assert parsed.accepts[0].amount == "1000" and parsed.accepts[0].pay_to == MERCHANT
    assert parsed.resource.url == "http://gw/r"

    body = payment_required_body("http://gw/r", "desc", "application/json", accepts, {})
    assert PaymentRequired.model_validate(body).accepts[1].network == "eip155:84532"
    for entry in body["accepts"]:  # a v1 parser finds what it needs in each entry
        v1 = PaymentRequirementsV1.model_validate(entry)
        assert v1.max_amount_required == "1000" and v1.resource == "http://gw/r"
    assert {k: v for k, v in body.items() if k != "accepts"} == {
        k: v for k, v in decode_header(header).items() if k != "accepts"
    }


def test_reference_client_payment_is_parsed_selected_and_verified():
    from eth_account import Account
    from x402 import x402ClientSync
    from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
    from x402.mechanisms.evm.exact import ExactEvmScheme

    from chains.evm.verify import verify_payment

    offered = [req()]
    ext = {"payment-identifier": x402.declare_payment_identifier(required=False)}
    header = encode_header(build_payment_required("http://gw/r", "d", "application/json", offered, ext))
    client = x402ClientSync()
    # The SDK only pays default (well-known) assets unless told otherwise; a devnet token is not one.
    client.set_spend_controls({"allowed_assets": [{"network": "eip155:31337", "asset": TOKEN}]})
    client.register("eip155:31337", ExactEvmScheme(signer=Account.from_key(PAYER_KEY)))
    pr = decode_payment_required_header(header)
    ref_payload = client.create_payment_payload(pr)
    exts = dict(ref_payload.extensions or {})
    # What the SDK's append_payment_identifier_to_extensions does (its package import needs jsonschema).
    declared = exts["payment-identifier"]
    exts["payment-identifier"] = {**declared, "info": {**declared["info"], "id": "pay_0123456789abcdef0123"}}
    ref_payload = ref_payload.model_copy(update={"extensions": exts})

    p = parse_payment_header(encode_payment_signature_header(ref_payload))
    assert p.version == 2 and payment_identifier(p.extensions) == "pay_0123456789abcdef0123"
    chosen = select_requirement(p, offered)
    v = verify_payment(p, chosen, 31337, int(time.time()))
    assert v.payer == Account.from_key(PAYER_KEY).address and v.value == 1000


def test_reference_parses_our_payment_and_receipt():
    from x402.http.utils import decode_payment_response_header, decode_payment_signature_header
    from x402.schemas import PaymentPayload as RefPayload

    pay = build_exact_evm_payload(PAYER_KEY, req(), now=int(time.time()))
    value = encode_header(build_payment_payload(req(), pay.to_wire(), resource={"url": "http://gw/r"}))
    ref = decode_payment_signature_header(value)
    assert isinstance(ref, RefPayload)
    assert ref.accepted.pay_to == MERCHANT and ref.payload["authorization"]["value"] == "1000"

    receipt = SettleResponse(success=True, transaction="0x" + "ab" * 32, network="eip155:31337", payer=MERCHANT)
    ref_receipt = decode_payment_response_header(encode_settle_response(receipt))
    assert ref_receipt.success and ref_receipt.transaction == receipt.transaction
