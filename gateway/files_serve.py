"""File paygates: paying answers a download URL; `/files/...` serves the bytes.

    paid request on a file paygate -> {"url", "expires_at"} (local: a signed URL on this
                                      gateway; s3: an S3 presigned URL)
    GET|HEAD /files/<paygate>/<name>?exp=&sig= -> the file, streamed (Range: 206 / 416)

The name below the paygate's prefix names the file; an unknown file is 404 before any
payment is taken. A charge is kept once the URL is issued (the 'origin' answered 200).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from aiohttp import web

from gateway.errors import NotFound, TollgateError
from gateway.files_url import LinkRefused, RangeNotSatisfiable, byte_range, check, signed_path, valid_name
from gateway.rails.base import PaidRequest, PaymentRejected, Priced, StoredResponse
from gateway.state import GATEWAY
from store.crypto import load_master_key
from store.files import FileStore, PaidFile

_CHUNK = 256 * 1024

URL_KEY = web.AppKey("files_url_key", bytes)


class Forbidden(TollgateError):
    status = 403
    code = "forbidden"


class NotSatisfiable(TollgateError):
    status = 416
    code = "range_not_satisfiable"


def files_dir(gw) -> Path:
    return Path(gw.config.files.directory)


def _key(app: web.Application) -> bytes:
    if URL_KEY not in app:
        gw = app[GATEWAY]
        box = load_master_key(gw.config.database.master_key_env,
                              gw.config.database.master_key_file)
        app[URL_KEY] = box.derive("tollgate files url v1")
    return app[URL_KEY]


async def _presign_s3(gw, f: PaidFile, ttl: int) -> str:
    from gateway.files_s3 import presign  # botocore only when S3 files exist
    return await presign(gw.config.files, f.bucket, f.object_key, ttl)


async def handle_paid(request: web.Request, match) -> web.StreamResponse:
    """The proxy's path for a file paygate (after the path rule and the route match)."""
    from gateway import proxy  # the challenge and replay answers are the proxy's own
    gw = request.app[GATEWAY]
    pg = match.paygate
    name = match.subpath.lstrip("/")
    f = await FileStore(gw.engine, gw.clock).get(pg.id, name) if valid_name(name) else None
    if f is None or request.method not in ("GET", "POST"):
        raise NotFound(f"no file {name!r} on this paygate")
    charge = rail = None
    if match.units:
        priced = Priced(pg, match.units, gw.resource_url(request), request.method,
                        request.raw_path)
        rails = [gw.rails[n] for n in pg.rails]
        rail = next((r for r in rails if r.carries_payment(request.headers)), None)
        if rail is None:
            return proxy._challenge_response(request, priced, rails)

        async def no_body() -> bytes:
            return b""

        paid = PaidRequest(request.method, request.raw_path, request.headers,
                           request.remote or "", no_body)
        try:
            charge = await rail.accept(paid, priced)
        except PaymentRejected as rej:
            return proxy._challenge_response(request, priced, rails, rej)
        if isinstance(charge, StoredResponse):
            return proxy._replay(charge)  # the link already issued for this payment
    ttl = int(gw.config.files.url_ttl_seconds)
    expires = int(gw.clock.now()) + ttl
    try:
        if f.storage == "s3":
            url = await _presign_s3(gw, f, ttl)
        else:
            base = gw.config.server.public_url or f"{request.scheme}://{request.host}"
            url = base + signed_path(_key(request.app), pg.id, name, expires)
    except BaseException:
        if charge is not None:
            await rail.complete(charge, 502)
        raise
    body = json.dumps({"url": url, "expires_at": expires}).encode()
    headers = {"Content-Type": "application/json"}
    if charge is not None:
        try:
            headers.update(await rail.complete(charge, 200))
        except PaymentRejected as rej:
            return proxy._challenge_response(request, priced, rails, rej)
        await asyncio.shield(rail.record(charge, StoredResponse(200, list(headers.items()), body)))
    return web.Response(status=200, body=body, headers=headers)


async def download(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    paygate_id, name = request.match_info["paygate"], request.match_info["name"]
    try:
        check(_key(request.app), request.raw_path.split("?", 1)[0], request.query_string,
              gw.clock.now())
    except LinkRefused as exc:
        raise Forbidden(str(exc)) from None
    f = await FileStore(gw.engine, gw.clock).get(paygate_id, name)
    if f is None or f.storage != "local" or not f.stored:
        raise NotFound("this file no longer exists")
    path = files_dir(gw) / paygate_id / f.stored
    try:
        size = (await asyncio.to_thread(os.stat, path)).st_size
    except FileNotFoundError:
        raise NotFound("this file no longer exists") from None
    try:
        rng = byte_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable as exc:
        raise NotSatisfiable(f"{exc} (the file has {size} bytes)",
                             headers={"Content-Range": f"bytes */{size}"}) from None
    first, last = rng if rng else (0, size - 1)
    resp = web.StreamResponse(status=206 if rng else 200)
    resp.content_type = f.content_type
    resp.headers["Accept-Ranges"] = "bytes"
    if f.sha256:
        resp.headers["ETag"] = f'"{f.sha256}"'
    if rng:
        resp.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    resp.content_length = last - first + 1 if size else 0
    await resp.prepare(request)
    if request.method == "HEAD" or size == 0:
        await resp.write_eof()
        return resp
    with open(path, "rb") as fh:  # read a chunk at a time: never the whole file
        fh.seek(first)
        left = last - first + 1
        while left > 0:
            chunk = await asyncio.to_thread(fh.read, min(_CHUNK, left))
            if not chunk:
                break
            await resp.write(chunk)
            left -= len(chunk)
    await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/files/{paygate}/{name}", download)  # HEAD too
