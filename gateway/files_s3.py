"""S3 presigned download URLs for paid files stored in S3-compatible storage (botocore,
imported only here). Credentials come from botocore's usual chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, a profile, an instance role); presigning is a local computation."""

from __future__ import annotations

import asyncio
from functools import lru_cache

from gateway.config import FilesConfig


@lru_cache(maxsize=8)
def _client(endpoint_url: str | None, region: str):
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    return session.create_client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


async def presign(cfg: FilesConfig, bucket: str, key: str, ttl: int) -> str:
    """A GET URL for s3://bucket/key valid for `ttl` seconds."""
    def run() -> str:
        return _client(cfg.s3_endpoint_url, cfg.s3_region).generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl)
    return await asyncio.to_thread(run)
