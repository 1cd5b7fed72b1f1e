"""Files of a file paygate, through the admin API (X-PAY signed).

    PUT /api/v1/paygates/{paygate_id}/files/{name}  multipart/form-data, part `file`: an upload
                                             application/json {bucket, key, content_type?}:
                                             an S3 object reference
    GET /api/v1/paygates/{paygate_id}/files        the paygate's files

An upload is streamed to a temporary file while its digest is computed (the signature
covers the raw body, so it is checked once the body is in, and a refused upload is
deleted); the `file` part is then copied out under a random name, with its sha256, size
and content type. Over `files.max_upload_bytes`: 413. Names are one plain segment
(`gateway.files_url.valid_name`); the stored name is random, so no name reaches the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path

from aiohttp import web

from gateway.admin.auth import ADMIN_KEY, authenticate, check_headers, check_key
from gateway.admin.common import Invalid, admin_of, gw_of, json_body, key_of, not_found, ok, sees
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.files_serve import files_dir
from gateway.files_url import valid_name
from store.files import FileStore, PaidFile

_CHUNK = 256 * 1024
_OVERHEAD = 64 * 1024  # multipart headers and boundaries around the file
_BOUNDARY = re.compile(r'boundary="?([^";]{1,70})"?')
_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")


def _view(f: PaidFile) -> dict:
    return {"name": f.name, "storage": f.storage, "size": f.size, "content_type": f.content_type,
            "sha256": f.sha256, "bucket": f.bucket, "key": f.object_key}


def _paygate(request: web.Request):
    gw, key = gw_of(request), key_of(request)
    pg = gw.config.paygate(request.match_info["paygate_id"])
    if pg is None or not sees(key, pg.provider):
        raise not_found("paygate")
    if pg.kind != "files":
        raise Invalid(["kind: this paygate is not a file paygate (kind = \"files\")"])
    return gw, pg


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_name(name):
        raise Invalid(["name: one segment of letters, digits, . _ - (no leading dot, no ..)"])
    return name


async def put_file(request: web.Request) -> web.Response:
    gw = gw_of(request)
    check_headers(request, gw.clock.now())
    ctype = request.headers.get("Content-Type", "")
    if ctype.startswith("multipart/form-data"):
        return await _upload(request, ctype)
    request[ADMIN_KEY] = await authenticate(request, admin_of(request).keys, gw.engine,
                                            gw.clock.now())
    gw, pg = _paygate(request)
    name = _name(request)
    body = await json_body(request)
    bucket, key = body.get("bucket"), body.get("key")
    content_type = body.get("content_type", "application/octet-stream")
    errors = [f"{k}: must be a non-empty string" for k, v in (("bucket", bucket), ("key", key))
              if not isinstance(v, str) or not v]
    if not isinstance(content_type, str) or not _TYPE.fullmatch(content_type):
        errors.append("content_type: must be a media type such as application/pdf")
    if errors:
        raise Invalid(errors)
    f = PaidFile(pg.id, name, "s3", None, bucket, key, None, content_type, None, 0.0)
    await _replace(gw, pg.id, f)
    return ok(_view(f), status=201)


async def _replace(gw, paygate_id: str, f: PaidFile) -> None:
    old = await FileStore(gw.engine, gw.clock).put(f)
    if old is not None and old.stored:
        (files_dir(gw) / paygate_id / old.stored).unlink(missing_ok=True)


async def _upload(request: web.Request, ctype: str) -> web.Response:
    gw = gw_of(request)
    limit = gw.config.files.max_upload_bytes
    declared = request.content_length
    if declared is not None and declared > limit + _OVERHEAD:
        raise PayloadTooLarge(f"an upload is at most {limit} bytes")
    m = _BOUNDARY.search(ctype)
    if m is None:
        raise BadRequest("multipart body without a boundary", code="invalid_multipart")
    await check_key(request, admin_of(request).keys)
    folder = files_dir(gw) / request.match_info["paygate_id"]
    if not valid_name(request.match_info["paygate_id"]):
        raise not_found("paygate")
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    raw_fd, raw_path = tempfile.mkstemp(dir=folder, prefix=".raw-")
    stored = None
    try:
        digest = hashlib.sha256()
        total = 0
        with os.fdopen(raw_fd, "wb") as raw:
            async for chunk in request.content.iter_chunked(_CHUNK):
                total += len(chunk)
                if total > limit + _OVERHEAD:
                    raise PayloadTooLarge(f"an upload is at most {limit} bytes")
                digest.update(chunk)
                await asyncio.to_thread(raw.write, chunk)
        request[ADMIN_KEY] = await authenticate(request, admin_of(request).keys, gw.engine,
                                                gw.clock.now(), body_sha256=digest.hexdigest())
        gw, pg = _paygate(request)
        name = _name(request)
        stored = secrets.token_hex(16)
        size, sha, content_type = await asyncio.to_thread(
            _extract, Path(raw_path), folder / stored, m.group(1).encode(), limit)
        f = PaidFile(pg.id, name, "local", stored, None, None, size, content_type, sha, 0.0)
        await _replace(gw, pg.id, f)
        stored = None  # kept
        return ok(_view(f), status=201)
    finally:
        Path(raw_path).unlink(missing_ok=True)
        if stored is not None:
            (folder / stored).unlink(missing_ok=True)


def _extract(raw: Path, out: Path, boundary: bytes, limit: int) -> tuple[int, str, str]:
    """Copy the body of the `file` part of the multipart body in `raw` to `out`, a chunk at
    a time; (size, sha256 hex, content type)."""
    with open(raw, "rb") as src:
        head = src.read(_OVERHEAD)
        delim = b"--" + boundary
        pos = 0
        while True:  # find the part named "file"
            start = head.find(delim, pos)
            end_headers = head.find(b"\r\n\r\n", start)
            if start < 0 or end_headers < 0:
                raise BadRequest("the multipart body has no `file` part", code="invalid_multipart")
            block = head[start + len(delim):end_headers].decode("latin-1")
            pos = end_headers + 4
            if re.search(r'content-disposition:[^\r\n]*\bname="file"', block, re.I):
                break
        m = re.search(r"content-type:\s*([^\r\n;]+)", block, re.I)
        content_type = m.group(1).strip() if m else "application/octet-stream"
        if not _TYPE.fullmatch(content_type):
            content_type = "application/octet-stream"
        closing = b"\r\n" + delim
        digest, size = hashlib.sha256(), 0
        src.seek(pos)
        carry = b""
        with open(out, "wb") as dst:
            while True:
                chunk = src.read(_CHUNK)
                data = carry + chunk
                cut = data.find(closing)
                if cut >= 0:
                    data, done = data[:cut], True
                elif not chunk:
                    raise BadRequest("the multipart body ends inside the file",
                                     code="invalid_multipart")
                else:  # keep a tail that may hold the start of the delimiter
                    keep = len(closing) - 1
                    data, carry, done = data[:-keep], data[-keep:], False
                size += len(data)
                if size > limit:
                    raise PayloadTooLarge(f"an upload is at most {limit} bytes")
                digest.update(data)
                dst.write(data)
                if done:
                    return size, digest.hexdigest(), content_type


async def list_files(request: web.Request) -> web.Response:
    gw, pg = _paygate(request)
    return ok({"files": [_view(f) for f in await FileStore(gw.engine, gw.clock).list(pg.id)]})


def add_routes(api, app: web.Application) -> None:
    api.add_get("/paygates/{paygate_id}/files", list_files)
    # Not behind the mount's signing wrapper: that reads the body whole, an upload streams.
    app.router.add_put("/api/v1/paygates/{paygate_id}/files/{name}", put_file)
