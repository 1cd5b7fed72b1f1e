"""The access log of `tollgate serve`: the line written without a LogRecord is the line
logging would write, and batched lines all reach the stream."""

from __future__ import annotations

import io
import logging

from gateway.access_log import SERVE_FORMAT, BatchedStreamHandler, _SecondCachedFormatter


def _handler(stream: io.StringIO) -> BatchedStreamHandler:
    h = BatchedStreamHandler(stream)
    h.setFormatter(_SecondCachedFormatter(SERVE_FORMAT))
    return h


def test_direct_line_is_the_line_logging_writes():
    via_record, direct = io.StringIO(), io.StringIO()
    a, b = _handler(via_record), _handler(direct)
    assert b.plain
    msg = '127.0.0.1 "GET /api/x HTTP/1.1" 200 12 0.000345s'
    for created in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5004):
        record = logging.LogRecord("aiohttp.access", logging.INFO, __file__, 1, msg, None, None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        a.handle(record)  # no running loop: written at once
        b.acquire()
        try:
            b._add(f"{b.formatter.time_text(created)} INFO aiohttp.access {msg}", logging.INFO)
        finally:
            b.release()
    a.flush()
    b.flush()
    assert direct.getvalue() == via_record.getvalue()
    assert logging.Formatter(SERVE_FORMAT).formatTime(record) in via_record.getvalue()


def test_a_handler_with_filters_or_another_format_is_not_written_directly():
    h = _handler(io.StringIO())
    h.addFilter(lambda r: True)
    assert not h.plain
    other = BatchedStreamHandler(io.StringIO())
    other.setFormatter(_SecondCachedFormatter("%(message)s"))
    assert not other.plain


async def test_lines_logged_on_the_loop_are_written_together_and_warnings_at_once():
    stream = io.StringIO()
    h = _handler(stream)
    h.emit_info("aiohttp.access", "one")
    h.emit_info("aiohttp.access", "two")
    assert stream.getvalue() == ""  # waiting for the batch
    record = logging.LogRecord("tollgate.proxy", logging.WARNING, __file__, 1, "bad", None, None)
    h.handle(record)
    lines = stream.getvalue().splitlines()
    assert [ln.split(" ", 4)[4] for ln in lines] == ["one", "two", "bad"]
    assert [ln.split(" ")[2] for ln in lines] == ["INFO", "INFO", "WARNING"]
