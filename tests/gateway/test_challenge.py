"""The 402 challenge: the v2 PAYMENT-REQUIRED header, the v1-readable body, and the
HTML paywall. Built with gateway.challenge directly (pure), from real config objects and
chains.x402 requirements."""

from __future__ import annotations

import base64
import binascii
import json
import re

import pytest
from x402.http.utils import decode_payment_required_header
from x402.schemas import PaymentRequired

from chains.x402 import PaymentRequirements
from gateway.challenge import challenge, paywall_html, wants_html
from gateway.config import PaygateConfig
from gateway.rails.base import Offer, Priced

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MERCHANT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
URL = "http://gw.example/skyroute/v1/flights?from=ZRH"
V1_FIELDS = ("maxAmountRequired", "resource", "description", "mimeType")


def priced(description: str = "SkyRoute flight search", units: int = 1) -> Priced:
    pg = PaygateConfig(id="skyroute", prefix="/skyroute", target="https://sky.example.com",
                       description=description, mime_type="application/json")
    return Priced(pg, units, URL, "GET", "/skyroute/v1/flights?from=ZRH")


def evm_offer(amount: str = "1000") -> Offer:
    return Offer(accepts=[PaymentRequirements(
        scheme="exact", network="eip155:31337", amount=amount, asset=TOKEN, pay_to=MERCHANT,
        max_timeout_seconds=60, extra={"name": "USD Coin", "version": "2"})])


def hedera_offer() -> Offer:
    return Offer(
        accepts=[PaymentRequirements(scheme="exact", network="hedera:testnet", amount="5000000",
                                     asset="0.0.0", pay_to="0.0.2002", max_timeout_seconds=180,
                                     extra={"feePayer": "0.0.1001"})],
        extensions={"hedera-session": {"spender": "0.0.1001", "price_tinybars": "5000000",
                                       "activate": "/api/sessions/activate",
                                       "wallet_url": "http://gw.example/"}})


def decode_std_b64_json(value: str) -> dict:
    raw = base64.b64decode(value, validate=True)  # standard alphabet, padded: strict
    return json.loads(raw.decode("utf-8"))


def test_v2_header_shape():
    body, headers = challenge(priced(), [evm_offer()])
    assert set(headers) == {"PAYMENT-REQUIRED"}
    obj = decode_std_b64_json(headers["PAYMENT-REQUIRED"])
    assert obj == {
        "x402Version": 2,
        "error": "payment required",
        "resource": {"url": URL, "description": "SkyRoute flight search",
                     "mimeType": "application/json"},
        "accepts": [{"scheme": "exact", "network": "eip155:31337", "amount": "1000",
                     "asset": TOKEN, "payTo": MERCHANT, "maxTimeoutSeconds": 60,
                     "extra": {"name": "USD Coin", "version": "2"}}],
        "extensions": {},
    }


def test_header_is_standard_base64_even_where_urlsafe_differs():
    # "??>" encodes to "Pz8+" and "???" to "Pz8/": characters url-safe base64 spells differently
    _, headers = challenge(priced("??>???~~ Flüge"), [evm_offer()])
    value = headers["PAYMENT-REQUIRED"]
    assert "-" not in value and "_" not in value
    assert decode_std_b64_json(value)["resource"]["description"] == "??>???~~ Flüge"


def test_body_is_the_header_object_plus_v1_fields_in_each_entry():
    body, headers = challenge(priced(), [evm_offer("2500"), hedera_offer()])
    header_obj = decode_std_b64_json(headers["PAYMENT-REQUIRED"])
    assert len(body["accepts"]) == 2
    for entry, v2 in zip(body["accepts"], header_obj["accepts"]):
        assert entry["maxAmountRequired"] == v2["amount"]
        assert entry["resource"] == URL
        assert entry["description"] == "SkyRoute flight search"
        assert entry["mimeType"] == "application/json"
    stripped = {**body, "accepts": [{k: v for k, v in e.items() if k not in V1_FIELDS}
                                    for e in body["accepts"]]}
    # HashToll's hint for clients of a session paygate is in the body only
    assert stripped.pop("hedera") == {"instructions": "Please approve more HBAR allowance",
                                      "spenderAccount": "0.0.1001", "requiredAmount": "0.05"}
    assert stripped == header_obj


def test_one_entry_per_offer_in_order_and_extensions_passed_through():
    body, headers = challenge(priced(), [evm_offer(), hedera_offer()])
    header_obj = decode_std_b64_json(headers["PAYMENT-REQUIRED"])
    assert [e["network"] for e in header_obj["accepts"]] == ["eip155:31337", "hedera:testnet"]
    assert header_obj["extensions"] == hedera_offer().extensions
    assert body["extensions"] == hedera_offer().extensions


def test_rejection_reason_and_extra_go_in_the_body_only():
    body, headers = challenge(priced(), [evm_offer()], "insufficient_funds",
                              {"message": "balance too low", "topup": "http://gw.example/"})
    assert body["error"] == "insufficient_funds"
    assert body["message"] == "balance too low" and body["topup"] == "http://gw.example/"
    header_obj = decode_std_b64_json(headers["PAYMENT-REQUIRED"])
    assert header_obj["error"] == "insufficient_funds"
    assert "message" not in header_obj and "topup" not in header_obj


def test_default_description_names_paygate_and_resource():
    body, _ = challenge(priced(description=""), [evm_offer()])
    assert body["resource"]["description"] == "skyroute /skyroute/v1/flights?from=ZRH"


def test_reference_x402_package_parses_header_and_body():
    body, headers = challenge(priced(), [evm_offer(), hedera_offer()])
    parsed = decode_payment_required_header(headers["PAYMENT-REQUIRED"])
    assert isinstance(parsed, PaymentRequired)
    assert parsed.x402_version == 2
    assert parsed.resource.url == URL
    assert parsed.resource.mime_type == "application/json"
    first = parsed.accepts[0]
    assert (first.scheme, first.network, first.amount, first.asset, first.pay_to,
            first.max_timeout_seconds) == ("exact", "eip155:31337", "1000", TOKEN, MERCHANT, 60)
    assert first.extra == {"name": "USD Coin", "version": "2"}
    assert parsed.extensions == hedera_offer().extensions
    # the body (with its extra v1 fields) still reads as a v2 PaymentRequired
    from_body = PaymentRequired.model_validate(body)
    assert from_body.accepts == parsed.accepts


@pytest.mark.parametrize("accept,html", [
    ("text/html,application/xhtml+xml,*/*;q=0.8", True),
    ("application/json", False),
    ("*/*", False),
    ("", False),
    ("application/json, text/html", False),
])
def test_wants_html(accept, html):
    assert wants_html({"Accept": accept}) is html


# ----------------------------------------------------------- HTML paywall

NASTY = '</script><script>alert(1)</script><!--<script>"&\' {{challenge_json}} {{options}}'


def embedded_json(page: str) -> str:
    opening = '<script id="x402-challenge" type="application/json">'
    start = page.index(opening) + len(opening)
    return page[start:page.index("</script>", start)]


def test_paywall_escapes_html_and_embeds_the_challenge_safely():
    body, _ = challenge(priced(NASTY), [evm_offer(), hedera_offer()])
    page = paywall_html(body)

    # the data element and the paywall's own bundle (no inline code), and the only
    # closing tags are theirs
    assert page.count("<script") == 2
    assert page.count("</script>") == 2
    assert '<script type="module" src="/static/build/paywall.js"></script>' in page
    # "<!--" inside a script element puts the HTML parser into a state where the
    # closing tag may not end it: it must not appear there either
    script = embedded_json(page)
    assert "<!--" not in script and "<" not in script
    # what the page's script reads is exactly the challenge
    assert json.loads(script) == body

    # the description is shown escaped, once, and placeholders inside it stay literal
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "{{challenge_json}} {{options}}" in page
    assert page.count('"x402Version"') == 1


def test_paywall_lists_options():
    body, _ = challenge(priced(), [evm_offer("1000"), hedera_offer()])
    page = paywall_html(body)
    assert "<code>exact</code> on <code>eip155:31337</code>: 1000 atomic units" in page
    assert "5000000 tinybars per unit" in page
    assert re.search(r'<a href="http://gw.example/">open the wallet page</a>', page)
    assert URL.replace("&", "&amp;") in page


def test_paywall_without_options():
    body, _ = challenge(priced(), [])
    assert body["accepts"] == []
    assert "No payment option is configured." in paywall_html(body)


def test_paywall_escapes_attacker_controlled_resource_url():
    body, _ = challenge(priced(), [evm_offer()])
    body["resource"]["url"] = 'http://gw.example/api/"><img src=x onerror=alert(1)>'
    page = paywall_html(body)
    assert "<img" not in page
    assert json.loads(embedded_json(page))["resource"]["url"] == body["resource"]["url"]


def test_decode_helper_rejects_non_base64():
    with pytest.raises(binascii.Error):
        decode_std_b64_json("not base64!")
