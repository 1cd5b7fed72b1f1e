"""Usage and revenue per paygate and period, JSON or CSV.

    GET /api/v1/usage?period=hour|day&from=<unix s>&to=<unix s>[&paygate=<id>][&top=10]
                     [&format=json|csv]

Defaults: `period=day`, the last 7 days (`to` = now). At most 366 days (hour: 31 days).
For each paygate the caller sees, and each period (UTC, aligned): calls, units, and per
(rail, network, asset) the amounts `settled`, `pending` and `failed` in atomic units
(decimal strings: they may exceed 2**53); plus the top payers over the whole range
(most calls first; their amounts exclude failed payments).
`units` is the amount divided by the paygate's current unit price in that asset (calls in
an asset it no longer prices count no units). CSV: one row per paygate, period and asset.
"""

from __future__ import annotations

import csv
import io
import time
from collections import defaultdict
from datetime import datetime, timezone

from aiohttp import web

from gateway.admin.common import Invalid, admin_of, gw_of, key_of, not_found, ok, sees
from gateway.config import Config, Eip3009Asset, HbarAsset, price_atomic
from store.usage import Paid, paid_calls

_PERIODS = {"hour": 3600, "day": 86400}
_MAX_RANGE = {"hour": 31 * 86400, "day": 366 * 86400}


def _asset_id(cfg: Config, network: str, asset: str) -> str:
    for name, a in cfg.assets.items():
        if isinstance(a, Eip3009Asset) and a.network == network and \
                a.address.lower() == asset.lower():
            return name
        if isinstance(a, HbarAsset) and asset in ("hbar", "HBAR", "0.0.0"):
            return name
    return asset


def _units(cfg: Config, paygate_id: str, asset_id: str, amount: int) -> int:
    pg = cfg.paygate(paygate_id)
    if pg is None or asset_id not in pg.prices or asset_id not in cfg.assets:
        return 0
    price = price_atomic(cfg, pg, asset_id)
    return amount // price if price else 0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _params(request: web.Request) -> tuple[str, float, float, int]:
    q, errors = request.query, []
    period = q.get("period", "day")
    if period not in _PERIODS:
        errors.append("period: must be hour or day")
        period = "day"
    now = time.time()
    try:
        until = float(q.get("to", now))
        since = float(q.get("from", until - 7 * 86400))
    except ValueError:
        raise Invalid(["from/to: must be unix seconds"]) from None
    if since >= until:
        errors.append("from: must be before to")
    elif until - since > _MAX_RANGE[period]:
        errors.append(f"from: the range is at most {_MAX_RANGE[period] // 86400} days "
                      f"for period={period}")
    try:
        top = int(q.get("top", 10))
        if not 0 <= top <= 1000:
            raise ValueError
    except ValueError:
        errors.append("top: must be an integer from 0 to 1000")
        top = 10
    if q.get("format", "json") not in ("json", "csv"):
        errors.append("format: must be json or csv")
    if errors:
        raise Invalid(errors)
    return period, since, until, top


def summarise(cfg: Config, calls: list[Paid], period: str, top: int) -> list[dict]:
    size = _PERIODS[period]
    by_pg: dict[str, list[Paid]] = defaultdict(list)
    for c in calls:
        by_pg[c.paygate_id].append(c)
    out = []
    for pg_id in sorted(by_pg):
        buckets: dict[float, dict] = {}
        payers: dict[str, dict] = defaultdict(lambda: {"calls": 0, "amounts": defaultdict(int)})
        for c in by_pg[pg_id]:
            start = c.at - (c.at % size)
            b = buckets.setdefault(start, {"start": _iso(start), "calls": 0, "units": 0,
                                           "money": defaultdict(lambda: defaultdict(int))})
            asset = _asset_id(cfg, c.network, c.asset)
            b["calls"] += 1
            if c.state != "failed":
                b["units"] += _units(cfg, pg_id, asset, c.amount)
            b["money"][(c.rail, c.network, asset)][c.state] += c.amount
            p = payers[c.payer]
            p["calls"] += 1
            if c.state != "failed":
                p["amounts"][asset] += c.amount
        rows = []
        for start in sorted(buckets):
            b = buckets[start]
            rows.append({"start": b["start"], "calls": b["calls"], "units": b["units"],
                         "amounts": [{"rail": r, "network": n, "asset": a,
                                      **{s: str(m.get(s, 0))
                                         for s in ("settled", "pending", "failed")}}
                                     for (r, n, a), m in sorted(b["money"].items())]})
        ranked = sorted(payers.items(), key=lambda kv: (-kv[1]["calls"], kv[0]))[:top]
        out.append({"paygate": pg_id, "periods": rows, "top_payers": [
            {"payer": who, "calls": p["calls"],
             "amounts": {a: str(v) for a, v in sorted(p["amounts"].items())}}
            for who, p in ranked]})
    return out


def to_csv(report: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["paygate", "period_start", "calls", "units", "rail", "network", "asset",
                "settled", "pending", "failed"])
    for pg in report:
        for row in pg["periods"]:
            for a in row["amounts"]:
                w.writerow([pg["paygate"], row["start"], row["calls"], row["units"], a["rail"],
                            a["network"], a["asset"], a["settled"], a["pending"], a["failed"]])
    return buf.getvalue()


async def usage(request: web.Request) -> web.Response:
    gw, key = gw_of(request), key_of(request)
    period, since, until, top = _params(request)
    rows = [r for r in await admin_of(request).paygates.all() if sees(key, r.provider)]
    ids = [r.id for r in rows]
    wanted = request.query.get("paygate")
    if wanted is not None:
        if wanted not in ids:
            raise not_found("paygate")
        ids = [wanted]
    network = gw.config.hedera.network if gw.config.hedera else "hedera"
    report = summarise(gw.config, await paid_calls(gw.engine, ids, since, until, network),
                       period, top)
    if request.query.get("format") == "csv":
        return web.Response(text=to_csv(report), content_type="text/csv", headers={
            "Content-Disposition": 'attachment; filename="tollgate-usage.csv"'})
    return ok({"period": period, "from": since, "to": until, "paygates": report})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/usage", usage)
