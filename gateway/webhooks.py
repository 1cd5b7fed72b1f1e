"""Webhook delivery (placeholder until the worker lands)."""

import asyncio


async def run(gw, admin) -> None:
    while True:
        await asyncio.sleep(3600)
