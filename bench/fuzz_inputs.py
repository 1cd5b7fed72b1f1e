"""Hostile inputs for the gateway fuzzer (bench/fuzz.py): seeded generators, no I/O.

`Fuzzer(rng, ctx).next()` returns one `Input`: a request none of whose parts is a valid
payment. Every payment-shaped part starts from something invalid by construction (an
EVM authorization from a payer without funds, signed for another chain, paying too
little or the wrong recipient, expired; a Hedera transfer signed by the wrong key,
paying too little, expired or not yet valid; a session token that is ended or belongs to
another paygate) and is then mutated, so a mutation can never turn it into a payment.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any

# Families and their weights (out of the sum): what share of the inputs each gets.
FAMILIES = {
    "x402-v2": 18, "x402-v1": 9, "x402-garbage": 12, "session-header": 11,
    "idempotency-key": 8, "challenge": 8, "activate": 13, "session-api": 4,
    "path": 13, "protocol": 2, "rate-limited": 2,
}

FREE_SUB = "/free/"  # paygate rules price `/free/*` at 0 units
PREFIXES = ("/evm", "/hbar", "/sess", "/all")  # the paygates fuzzed with payments
X402_PREFIXES = ("/evm", "/evm", "/hbar", "/hbar", "/all", "/all", "/sess")
SUBPATHS = ("/v1/flights", "/v1/bookings", "/", "/free/ping", "/x/y?q=1")


@dataclass
class Input:
    family: str
    method: str
    target: str  # the request target as sent on the wire (path?query)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    gateway: str = "main"  # "limited": the gateway with the session API rate limit on


@dataclass
class Context:
    """What the harness learned from the running gateway and devnets."""

    evm_reqs: list[dict[str, Any]]  # offered requirements (wire dicts)
    hbar_reqs: list[dict[str, Any]]
    evm_payloads: list[dict[str, Any]]  # exact-evm `payload` objects, each invalid
    hbar_payloads: list[dict[str, Any]]  # exact-hedera `payload` objects, each invalid
    tokens: list[str]  # real session tokens that cannot pay on PREFIXES
    nonces: list[tuple[str, str, str]]  # (nonce, account id, paygate id), unspent
    accounts: list[str]  # real account ids
    tx_ids: list[str]  # real transaction ids that prove nothing for any pooled nonce
    signatures: list[str]  # real signatures over messages of no pooled nonce
    slow_inputs: bool = True  # allow activations the mirror takes seconds to refuse


# -- junk values ------------------------------------------------------------------------

_UNICODE = ("é", "ü", "ß", "漢字", "🙂", "\u202e", "\u200b", "\ufeff", "Ω", "\u0000", "\ud800")
_ASCII_JUNK = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \t"


def junk_string(rng: random.Random) -> str:
    k = rng.randrange(12)
    if k == 0:
        return ""
    if k == 1:
        return "x" * rng.choice((129, 256, 1000, 5000, 9000))
    if k == 2:
        return "0x" + "".join(rng.choice("0123456789abcdefABCDEFgz") for _ in range(rng.choice((1, 39, 40, 41, 64, 65, 130, 131))))
    if k == 3:
        return "".join(rng.choice(_UNICODE) for _ in range(rng.randint(1, 8)))
    if k == 4:
        return "".join(rng.choice(_ASCII_JUNK) for _ in range(rng.randint(1, 20)))
    if k == 5:
        return str(rng.choice((-1, 0, 2**256, 2**256 - 1, 2**64, -(2**255), 10**78, 10**100)))
    if k == 6:
        return rng.choice(("1e3", "1.5", "-0", "+1", " 1", "1 ", "0x3e8", "１２３", "NaN", "Infinity"))
    if k == 7:
        # Transaction ids here are all malformed: a well-formed unknown one makes an
        # activation poll the mirror for seconds (`Context.slow_inputs` sends a few).
        return rng.choice(("0.0.3", "0.0.-1", "0.0.99999999999", "1.2.3.4", "0.0.0", "0.0.1@",
                           "0.0.2@1700000000.1234567890", "0.0.2-1700000000", "@1.1", "eip155:1",
                           "hedera:devnet", "exact", "upto"))
    if k == 8:
        return base64.b64encode(rng.randbytes(rng.choice((1, 32, 64, 65, 100)))).decode()
    if k == 9:
        return "".join(chr(rng.randrange(0x20, 0x7f)) for _ in range(rng.randint(1, 40)))
    if k == 10:
        return "".join(chr(rng.randrange(0, 0x20)) for _ in range(rng.randint(1, 4)))
    return "hs_" + "".join(rng.choice("abcdefABCDEF0123456789_-") for _ in range(rng.randint(0, 60)))


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(14 if depth < 3 else 10)
    if k < 4:
        return junk_string(rng)
    if k == 4:
        return rng.choice((0, -1, 1, 2, 2**53 + 1, 2**64, 2**256, -(2**256), 10**400))
    if k == 5:
        return rng.choice((0.0, -0.5, 1e308, float("inf"), float("-inf"), float("nan"), 1e-300))
    if k == 6:
        return rng.choice((None, True, False))
    if k == 7:
        return []
    if k == 8:
        return {}
    if k == 9:
        return rng.choice(("2", 2, "1", 1, "exact"))
    if k == 10:
        return [junk_value(rng, depth + 1) for _ in range(rng.randint(1, 4))]
    if k == 11:
        return {junk_string(rng)[:20]: junk_value(rng, depth + 1) for _ in range(rng.randint(1, 4))}
    if k == 12:
        return nested(rng.choice((10, 100, 900)), rng)
    return {"x402Version": junk_value(rng, depth + 1), "payload": junk_value(rng, depth + 1)}


def nested(depth: int, rng: random.Random) -> Any:
    value: Any = rng.choice((1, "x", None))
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def _index(rng: random.Random, n: int) -> int:
    """A position below `n` from exactly one draw, whatever `n` is: signed material
    (transaction bytes, account ids) varies in length between runs, and `randrange`
    would then draw a different number of times and the rest of a seeded run would
    differ."""
    return int(rng.random() * n)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def mutate(obj: Any, rng: random.Random, rounds: int | None = None) -> Any:
    """A deep copy of `obj` with 1-3 random edits: a field replaced by junk, deleted,
    retyped, a key added, or a value's type changed in place."""
    obj = copy.deepcopy(obj)
    for _ in range(rounds or rng.randint(1, 3)):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            return junk_value(rng)
        path = rng.choice(paths)
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        k = rng.randrange(6)
        if k == 0 and isinstance(parent, dict):
            del parent[last]
        elif k == 1 and isinstance(parent, dict):
            parent[junk_string(rng)[:30] or "extra"] = junk_value(rng)
        elif k == 2:
            value = parent[last]
            parent[last] = (int(value) if isinstance(value, str) and value.isdigit() and len(value) < 100
                            else str(value) if not isinstance(value, str) else [value])
        elif k == 3 and isinstance(parent[last], str) and parent[last]:
            s = parent[last]
            i = _index(rng, len(s))
            parent[last] = s[:i] + rng.choice(("", "0", "f", "x", " ", "é", s[i] * 50)) + s[i + 1:]
        else:
            parent[last] = junk_value(rng)
    return obj


def b64json(obj: Any, rng: random.Random | None = None) -> str:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=bool(rng and rng.random() < 0.5),
                      allow_nan=True)
    data = text.encode("utf-8", "surrogatepass")
    out = base64.b64encode(data).decode("ascii")
    if rng and rng.random() < 0.2:
        out = out.rstrip("=")  # the gateway tolerates missing padding
    return out


# -- the fuzzer ---------------------------------------------------------------------------


class Fuzzer:
    def __init__(self, rng: random.Random, ctx: Context) -> None:
        self.rng = rng
        self.ctx = ctx
        self._families = list(FAMILIES)
        self._weights = [FAMILIES[f] for f in self._families]
        self._rail_prefixes: tuple[str, ...] = PREFIXES  # where the last payment belongs

    def next(self) -> Input:
        family = self.rng.choices(self._families, self._weights)[0]
        return getattr(self, "_" + family.replace("-", "_"))()

    # -- helpers ----------------------------------------------------------------------

    def _paid_target(self, prefixes: tuple[str, ...] = PREFIXES) -> tuple[str, str]:
        sub = self.rng.choice([s for s in SUBPATHS if not s.startswith(FREE_SUB)])
        method = "POST" if sub == "/v1/bookings" else self.rng.choice(("GET", "GET", "POST", "PUT", "DELETE"))
        return method, self.rng.choice(prefixes) + sub

    def _body(self) -> bytes | None:
        return self.rng.choice((None, None, b"", b'{"seat":"12A"}', self.rng.randbytes(300)))

    def _payment_header(self) -> str:
        return self.rng.choice(("PAYMENT-SIGNATURE", "PAYMENT-SIGNATURE", "X-PAYMENT",
                                "payment-signature", "x-payment"))

    def _v2(self) -> dict[str, Any]:
        rng, ctx = self.rng, self.ctx
        if rng.random() < 0.6:
            req, payload = rng.choice(ctx.evm_reqs), rng.choice(ctx.evm_payloads)
            self._rail_prefixes = ("/evm", "/all")
        else:
            req, payload = rng.choice(ctx.hbar_reqs), rng.choice(ctx.hbar_payloads)
            self._rail_prefixes = ("/hbar", "/all")
        obj: dict[str, Any] = {"x402Version": 2, "accepted": copy.deepcopy(req),
                               "payload": copy.deepcopy(payload)}
        if rng.random() < 0.3:
            obj["resource"] = {"url": "http://127.0.0.1/evm/v1/flights"}
        if rng.random() < 0.4:
            pid = rng.choice(("a" * 16, "fuzz_" + rng.randbytes(8).hex(), "", "x" * 129, "bad id!"))
            obj["extensions"] = {"payment-identifier": {"info": {"id": pid}}}
        return obj

    def _v1(self) -> dict[str, Any]:
        rng, ctx = self.rng, self.ctx
        if rng.random() < 0.6:
            req, payload = rng.choice(ctx.evm_reqs), rng.choice(ctx.evm_payloads)
            self._rail_prefixes = ("/evm", "/all")
        else:
            req, payload = rng.choice(ctx.hbar_reqs), rng.choice(ctx.hbar_payloads)
            self._rail_prefixes = ("/hbar", "/all")
        network = rng.choice((req["network"],) * 6 + ("base-sepolia", "base", "hedera-testnet"))
        return {"x402Version": rng.choice((1, 1, 1, 2)), "scheme": "exact", "network": network,
                "payload": copy.deepcopy(payload)}

    # -- families -----------------------------------------------------------------------

    def _mutated(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Mostly the signed payload only (so inputs get past the envelope checks to the
        chain's own), sometimes the whole object, sometimes nothing."""
        rng = self.rng
        k = rng.random()
        if k < 0.45:
            obj["payload"] = mutate(obj["payload"], rng)
        elif k < 0.55 and isinstance(obj.get("accepted"), dict):
            obj["accepted"] = mutate(obj["accepted"], rng, rounds=1)
        elif k < 0.85:
            obj = mutate(obj, rng)
        return obj

    def _x402_v2(self) -> Input:
        rng = self.rng
        obj = self._mutated(self._v2())
        method, target = self._paid_target(
            self._rail_prefixes if self.rng.random() < 0.85 else X402_PREFIXES)
        headers = [(self._payment_header(), b64json(obj, rng))]
        if rng.random() < 0.1:  # both versions at once, or the header twice
            headers.append((rng.choice(("X-PAYMENT", "PAYMENT-SIGNATURE")), b64json(self._v1(), rng)))
        return Input("x402-v2", method, target, headers, self._body())

    def _x402_v1(self) -> Input:
        obj = self._mutated(self._v1())
        method, target = self._paid_target(
            self._rail_prefixes if self.rng.random() < 0.85 else X402_PREFIXES)
        return Input("x402-v1", method, target, [(self._payment_header(), b64json(obj, self.rng))],
                     self._body())

    def _x402_garbage(self) -> Input:
        rng = self.rng
        k = rng.randrange(10)
        if k == 0:  # not base64 at all
            value = "".join(rng.choice("ABCxyz019+/=-_!*. é") for _ in range(rng.randint(1, 200)))
        elif k == 1:  # base64 of bytes that are not UTF-8 / not JSON
            value = base64.b64encode(rng.randbytes(rng.randint(1, 400))).decode()
        elif k == 2:  # base64 of a JSON value that is not an object
            value = b64json(rng.choice((junk_value(rng), [1, 2], "x", 3, None, nested(50, rng))), rng)
        elif k == 3:  # a junk object
            value = b64json({junk_string(rng)[:20]: junk_value(rng) for _ in range(rng.randint(0, 5))}, rng)
        elif k == 4:  # deeply nested, around the header length limit
            value = b64json({"x402Version": 2, "payload": nested(rng.choice((500, 1000, 3000)), rng)})
        elif k == 5:  # longer than any limit
            value = b64json({"x402Version": 2, "payload": {"p": "A" * rng.choice((6000, 9000, 12000, 20000))}})
        elif k == 6:  # urlsafe alphabet, or whitespace inside
            raw = b64json(self._v2())
            value = raw.replace("+", "-").replace("/", "_") if rng.random() < 0.5 else raw[:10] + " " + raw[10:]
        elif k == 7:  # a huge number literal, duplicate keys
            digits = "9" * rng.choice((20, 400, 4000))
            text = rng.choice((f'{{"x402Version":{digits},"payload":{{}}}}',
                               f'{{"x402Version":2,"x402Version":1,"scheme":"exact","network":"eip155:1","payload":{{"authorization":{{"value":{digits}}}}}}}'))
            value = base64.b64encode(text.encode()).decode()
        elif k == 8:  # empty or blank
            value = rng.choice(("", " ", "=", "==", "\t"))
        else:  # truncated
            raw = b64json(self._v2())
            value = raw[:1 + _index(rng, len(raw) - 1)]
        method, target = self._paid_target()
        return Input("x402-garbage", method, target, [(self._payment_header(), value)], self._body())

    def _token(self) -> str:
        rng = self.rng
        if self.ctx.tokens and rng.random() < 0.3:
            tok = rng.choice(self.ctx.tokens)
            return rng.choice((tok, tok + "x", tok[:-1], tok.upper(), " " + tok + " ", tok + tok))
        return junk_string(rng)

    def _session_header(self) -> Input:
        rng = self.rng
        token = self._token()
        k = rng.randrange(4)
        if k == 0:
            headers = [("X-Hedera-Session-Id", token)]
        elif k == 1:
            headers = [("Authorization", rng.choice(("Bearer ", "bearer ", "BEARER  ", "Bearer\t", "Basic ", "")) + token)]
        elif k == 2:
            headers = [("X-Hedera-Session-Id", token), ("Authorization", "Bearer " + self._token())]
        else:
            headers = [("X-Hedera-Session-Id", token), ("X-Hedera-Session-Id", self._token())]
        if rng.random() < 0.8:
            headers.append(("Idempotency-Key", "k-" + rng.randbytes(8).hex()))
        method, target = self._paid_target(("/sess", "/all", "/evm"))
        return Input("session-header", method, target, headers, self._body())

    def _idempotency_key(self) -> Input:
        rng = self.rng
        key = rng.choice(("", " ", "a", "k" * 200, "k" * 201, "k" * 5000, "a b", "é",
                          "\x01", "\x7f", "key\ttab", junk_string(rng)))
        names = rng.choice((("Idempotency-Key",), ("X-Idempotency-Key",),
                            ("Idempotency-Key", "X-Idempotency-Key"), ("Idempotency-Key", "Idempotency-Key"),
                            ("idempotency-key",)))
        headers = [("X-Hedera-Session-Id", self._token())] + [(n, key) for n in names]
        if rng.random() < 0.3:
            headers.append(("X-Idempotency-Key", junk_string(rng)))
        method, target = self._paid_target(("/sess", "/all"))
        return Input("idempotency-key", method, target, headers, self._body())

    def _json_body(self, obj: Any) -> bytes:
        rng = self.rng
        k = rng.randrange(12)
        if k == 0:
            return rng.choice((b"", b"{", b"null", b"[]", b'"x"', b"\xff\xfe", b"{\"a\":}", b"1e999",
                               b'{"account_id": NaN}', b"\x00" * 10))
        if k == 1:
            return json.dumps(obj).encode()[: rng.randint(1, 50)]
        if k == 2:
            return b"[" * rng.choice((100, 2000, 30000)) + b"]" * rng.choice((0, 100))
        if k == 3:
            return json.dumps(obj).encode() + b" " * rng.choice((70000, 200))
        return json.dumps(obj, allow_nan=True, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def _session_fields(self) -> dict[str, Any]:
        rng, ctx = self.rng, self.ctx
        nonce, account, paygate = rng.choice(ctx.nonces)
        body: dict[str, Any] = {}
        names = rng.choice((("account_id", "paygate"), ("accountId", "paygateId"), ("account", "paygate_id")))
        body[names[0]] = rng.choice((account, account, rng.choice(ctx.accounts), junk_value(rng)))
        body[names[1]] = rng.choice((paygate, paygate, "sess", "all", "evm", "other", "nope", junk_value(rng)))
        body["nonce"] = rng.choice((nonce, nonce, rng.choice(ctx.nonces)[0], junk_value(rng)))
        return body

    def _headers_for_json(self) -> list[tuple[str, str]]:
        return [("Content-Type", self.rng.choice(("application/json", "application/json",
                                                  "text/plain", "application/json; charset=latin-1",
                                                  "multipart/form-data")))]

    def _challenge(self, gateway: str = "main", family: str = "challenge") -> Input:
        rng = self.rng
        body = self._session_fields()
        del body["nonce"]
        if rng.random() < 0.7:
            body = mutate(body, rng)
        method = "POST" if rng.random() < 0.95 else rng.choice(("GET", "PUT", "DELETE"))
        return Input(family, method, "/api/sessions/challenge", self._headers_for_json(),
                     self._json_body(body), gateway)

    def _activate(self, gateway: str = "main", family: str = "activate") -> Input:
        rng, ctx = self.rng, self.ctx
        body = self._session_fields()
        slow = False
        k = rng.randrange(6)
        if k == 0:
            body[rng.choice(("transaction_id", "transactionId"))] = rng.choice(ctx.tx_ids)
        elif k == 1:
            body["signature"] = rng.choice(ctx.signatures)
        elif k == 2:
            body["signature"] = rng.choice(ctx.signatures)[:-2] + rng.choice(("00", "ff", "zz", ""))
        elif k == 3:
            body[rng.choice(("transaction_id", "signature"))] = junk_value(rng)
        elif k == 4:
            body["transaction_id"] = rng.choice(ctx.tx_ids)
            body["signature"] = rng.choice(ctx.signatures)
        elif ctx.slow_inputs and rng.random() < 0.02:
            # well formed, never submitted: the mirror is polled until the proof wait ends
            body["transaction_id"] = f"{body.get('account_id', '0.0.2')}@1700000000.{rng.randrange(10**9):09d}"
            slow = True
        if rng.random() < 0.5 and not slow:
            body = mutate(body, rng)
        method = "POST" if rng.random() < 0.95 else rng.choice(("GET", "PATCH"))
        return Input(family, method, "/api/sessions/activate", self._headers_for_json(),
                     self._json_body(body), gateway)

    def _session_api(self) -> Input:
        rng = self.rng
        token = self._token()
        header = rng.choice((("X-Hedera-Session-Id", token), ("Authorization", "Bearer " + token)))
        method = rng.choice(("GET", "GET", "DELETE", "POST", "HEAD"))
        return Input("session-api", method, "/api/sessions/current" + rng.choice(("", "/", "?x=1")), [header])

    def _rate_limited(self) -> Input:
        if self.rng.random() < 0.5:
            return self._challenge("limited", "rate-limited")
        return self._activate("limited", "rate-limited")

    def _path(self) -> Input:
        rng = self.rng
        prefix = rng.choice(PREFIXES + ("/other", "/api/sessions", "/healthz", "", "/EVM", "/evmx"))
        sub = rng.choice(SUBPATHS + ("/free/../v1/flights", "/free/%2e%2e/v1/flights", "/free/x/../../v1"))
        path = prefix + sub
        for _ in range(rng.randint(1, 3)):
            path = self._mangle(path)
        method = rng.choice(("GET", "GET", "POST", "HEAD", "OPTIONS", "PATCH", "DELETE", "FOO", "get"))
        return Input("path", method, path, [], self._body() if method in ("POST", "PATCH") else None)

    def _mangle(self, path: str) -> str:
        rng = self.rng
        i = _index(rng, len(path) + 1)
        k = rng.randrange(14)
        if k == 0:  # percent-encode one character, either case
            if i < len(path) and path[i] not in "?":
                enc = "%{:02x}".format(ord(path[i])) if ord(path[i]) < 256 else path[i]
                return path[:i] + (enc.upper() if rng.random() < 0.5 else enc) + path[i + 1:]
            return path
        ins = [
            "/./", "/../", "/%2e/", "/%2E%2E/", "/.%2e/", "//", "///", ";", ";jsessionid=1", "%2F", "%2f",
            "%00", "%", "%zz", "%C0%AE%C0%AE", "\\", "é", "%C3%A9", "🙂", "?", "#frag", "x" * 5000,
            "/free", "%20", " ", "\t", "..", "/" * 50, "?a=%ZZ&b", "x" * 20000,
        ]
        if k == 1:
            return path + "/" + "x" * rng.choice((200, 2000, 9000))
        return path[:i] + rng.choice(ins) + path[i:]

    def _protocol(self) -> Input:
        """Header names and values no client library would send."""
        rng = self.rng
        name = rng.choice(("X Payment", "X-PAYMENT:", "PAYMENT-SIGNATURE ", "é", "X-\x01", "",
                           "X-Hedera-Session-Id", "Content-Length", "Transfer-Encoding", "Host",
                           "X-Tollgate-Units", "Sigwei-Secret", "X-Forwarded-For"))
        value = rng.choice(("a\x00b", "a\x7fb", "é", "\udcff\udcfe", "v" * 20000, "1", "-1",
                            "chunked", "999999999999999999999", "hs_" + "x" * 40, "0"))
        method, target = self._paid_target()
        # Always a body (and its own Content-Length): a forged length then conflicts
        # instead of leaving the server waiting for bytes that never come.
        return Input("protocol", method, target, [(name, value)], b"x" * 8)
