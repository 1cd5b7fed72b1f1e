"""The 402 answer to an unpaid (or wrongly paid) request. Pure: builds bodies and headers.

JSON clients get the v2 `PAYMENT-REQUIRED` header and the same object as the body, whose
accepts entries also carry the v1 fields so v1 clients can pay from it. A browser
(`Accept: text/html`) gets the HTML paywall instead, with the same header.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Mapping

from chains.x402 import build_payment_required, encode_header, payment_required_body

from gateway.hashtoll import payment_hint
from gateway.rails.base import Offer, Priced

_PAYWALL = Path(__file__).resolve().parent.parent / "static" / "paywall.html"


def wants_html(headers: Mapping[str, str]) -> bool:
    accept = headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


def challenge(priced: Priced, offers: list[Offer], error: str = "payment required",
              extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(body, headers) for a 402 on `priced` advertising every rail's offer. `extra`
    (e.g. a top-up link) goes into the body only."""
    accepts = [a for o in offers for a in o.accepts]
    extensions: dict[str, Any] = {}
    for o in offers:
        extensions.update(o.extensions)
    args = (priced.resource_url,
            priced.paygate.description or f"{priced.paygate.id} {priced.path_qs}",
            priced.paygate.mime_type, accepts, extensions)
    body = payment_required_body(*args, error=error) | (extra or {}) | payment_hint(extensions)
    header = encode_header(build_payment_required(*args, error=error))
    return body, {"PAYMENT-REQUIRED": header}


def paywall_html(body: dict[str, Any]) -> str:
    """The HTML paywall: what the resource costs and how to pay, with the 402 JSON
    embedded for the page's script."""
    template = _PAYWALL.read_text(encoding="utf-8")
    rows = []
    for entry in body.get("accepts", []):
        rows.append(
            f"<li><code>{html.escape(entry.get('scheme', ''))}</code> on "
            f"<code>{html.escape(entry.get('network', ''))}</code>: "
            f"{html.escape(str(entry.get('amount', '')))} atomic units of "
            f"<code>{html.escape(str(entry.get('asset', '')))}</code></li>")
    session = body.get("extensions", {}).get("hedera-session")
    if session:
        rows.append(
            f"<li>Hedera allowance session: {html.escape(str(session.get('price_tinybars', '')))} "
            f"tinybars per unit &mdash; <a href=\"{html.escape(session.get('wallet_url', '/'))}\">"
            "open the wallet page</a></li>")
    resource = body.get("resource", {})
    # Inside <script> no "<" may appear at all ("</script>" ends it, "<!--" can stop the
    # closing tag from doing so): JSON's \u escapes keep the data identical.
    data = (json.dumps(body).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))
    values = {
        "resource": html.escape(resource.get("url", "")),
        "description": html.escape(resource.get("description", "")),
        "options": "\n".join(rows) or "<li>No payment option is configured.</li>",
        "challenge_json": data,
    }
    # One pass, so a placeholder spelled inside a value is never substituted.
    return re.sub(r"\{\{(resource|description|options|challenge_json)\}\}",
                  lambda m: values[m.group(1)], template)
