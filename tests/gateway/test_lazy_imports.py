"""A gateway without Hedera rails never imports the Hedera SDK (1-2 s at start-up)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serving_without_hedera_rails_does_not_import_the_sdk(tmp_path):
    script = textwrap.dedent(f"""
        import asyncio, sys
        from aiohttp import web
        from gateway.app import create_app
        from gateway.config import parse_config

        async def main():
            cfg = parse_config({{
                "server": {{"allow_private_targets": True}},
                "database": {{"url": "sqlite+aiosqlite:///{tmp_path}/db.sqlite",
                              "master_key_file": "{tmp_path}/master.key"}},
                "paygates": [{{"id": "free", "prefix": "/free", "default_units": 0,
                               "target": "http://127.0.0.1:9"}}]}})
            runner = web.AppRunner(create_app(cfg))
            await runner.setup()  # runs the start-up: store, secrets, rails
            await runner.cleanup()
            print("hiero_sdk_python" in sys.modules)

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
