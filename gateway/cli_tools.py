"""CLI commands that drive chains: `devnet`, `demo`, `pay`. Heavy imports stay inside
the commands so `tollgate serve` starts fast."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    return None
