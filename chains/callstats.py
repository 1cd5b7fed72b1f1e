"""Counting calls to remote chain services (EVM JSON-RPC, the Hedera mirror) without the
chain clients knowing who counts: a client method is decorated with `@timed(service)`;
an observer registered by the gateway (`gateway.metrics`) receives one report per call.

    observer(service, call, outcome, seconds)

`call` is the JSON-RPC method when `label_first_arg` is set (a set the gateway's own code
chooses, so bounded), else "request"; `outcome` is "ok" or the exception's class name.
No observer, no cost beyond a clock read.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Awaitable, Callable

Observer = Callable[[str, str, str, float], None]
_observers: list[Observer] = []


def observe(observer: Observer) -> None:
    """Idempotent: register `observer` for every later call report."""
    if observer not in _observers:
        _observers.append(observer)


def _report(service: str, call: str, outcome: str, seconds: float) -> None:
    for observer in _observers:
        try:
            observer(service, call, outcome, seconds)
        except Exception:  # counting must never break a payment path
            pass


def timed(service: str, *, label_first_arg: bool = False):
    def wrap(fn: Callable[..., Awaitable[Any]]):
        @functools.wraps(fn)
        async def call(self, *args, **kwargs):
            name = str(args[0]) if label_first_arg and args else "request"
            started = time.monotonic()
            try:
                result = await fn(self, *args, **kwargs)
            except BaseException as exc:
                _report(service, name, type(exc).__name__, time.monotonic() - started)
                raise
            _report(service, name, "ok", time.monotonic() - started)
            return result
        return call
    return wrap
