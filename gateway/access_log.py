"""Cheap log lines for `tollgate serve`, which writes one access line per request
(`tollgate.access`, see gateway.request_context).

A LogRecord per request (with the access fields attached) was a tenth of the proxy's CPU:
in the text format `write_info_line` writes the same line straight to the handler, and
`lean_log_records` drops the per-record bookkeeping (caller frame, thread, process names)
the format never prints. `batch_stderr_logging` writes log lines in batches instead of a
write (a system call) per line, with the time stamp's text built once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time



def write_info_line(logger: logging.Logger, message: str) -> bool:
    """Write an INFO line of `logger` straight to its handler, without a LogRecord, when
    the record would reach exactly one batched handler with the serve format (the text
    format of `tollgate serve`): the line is then the same. False when it would not (JSON
    format, other handlers, tests): the caller logs the record the usual way."""
    handler = _only_handler(logger)
    if handler is None:
        return False
    handler.emit_info(logger.name, message)
    return True


def lean_log_records() -> None:
    """Records skip what the format `%(asctime)s %(levelname)s %(name)s %(message)s`
    does not show: the caller's file and line (a stack walk per record), thread and
    process names (the knobs the logging documentation names for this)."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None


# The format `tollgate serve` logs with (logging.basicConfig in gateway.cli).
SERVE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _only_handler(logger: logging.Logger) -> "BatchedStreamHandler | None":
    """The handler an INFO record of `logger` would reach, when that is one batched
    handler with the serve format and nothing on the way filters or adds handlers: the
    line it would write can then be written without a LogRecord."""
    found = None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        for h in node.handlers:
            if found is not None or type(h) is not BatchedStreamHandler or not h.plain:
                return None
            found = h
        if not node.propagate:
            break
        node = node.parent
    if found is None or found.level > logging.INFO or logging.root.manager.disable >= logging.INFO:
        return None
    return found


class _SecondCachedFormatter(logging.Formatter):
    """`%(asctime)s` as logging.Formatter writes it, the date part built once a second
    (local-time offsets change on whole seconds, so the cache is exact)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.time_text(record.created)

    def time_text(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        # as LogRecord computes msecs
        return self.default_msec_format % (self._text, int((created - second) * 1000))


class BatchedStreamHandler(logging.StreamHandler):
    """A StreamHandler that writes the lines logged on an event loop in one write per
    `delay` seconds instead of one per line. WARNING and above, lines from threads
    without a running loop, and process exit (logging.shutdown flushes) write at once."""

    def __init__(self, stream=None, delay: float = 0.1, max_lines: int = 256) -> None:
        super().__init__(stream)
        self._delay, self._max = delay, max_lines
        self._lines: list[str] = []
        self._armed = False

    @property
    def plain(self) -> bool:
        """The serve format, and no filters but ones that only redact the rendered line
        (they have `redact(text) -> text`): `emit_info` writes what `emit` would."""
        return (all(hasattr(f, "redact") for f in self.filters)
                and isinstance(self.formatter, _SecondCachedFormatter)
                and self.formatter._fmt == SERVE_FORMAT)

    def emit_info(self, name: str, message: str) -> None:
        """The line `emit` writes for an INFO record of logger `name` (see `plain`)."""
        for f in self.filters:
            message = f.redact(message)
        now = time.time()
        self.acquire()
        try:
            stamp = self.formatter.time_text(now)
            self._add(f"{stamp} INFO {name} {message}", logging.INFO)
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno)

    def _add(self, line: str, level: int) -> None:
        self._lines.append(line)
        if level >= logging.WARNING or len(self._lines) >= self._max:
            self._write()
            return
        if not self._armed:
            try:
                asyncio.get_running_loop().call_later(self._delay, self.flush)
            except RuntimeError:  # no loop in this thread: nothing would flush later
                self._write()
                return
            self._armed = True

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        self._armed = False
        if self._lines:
            text = "\n".join(self._lines) + self.terminator
            self._lines.clear()
            try:
                self.stream.write(text)
            except Exception:
                pass  # as StreamHandler: a broken stderr must not break requests
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()


def batch_stderr_logging() -> None:
    """Swap the root logger's plain stream handlers (logging.basicConfig's) for batched
    ones with the same stream, format and level."""
    root = logging.getLogger()
    for i, h in enumerate(list(root.handlers)):
        if type(h) is not logging.StreamHandler:
            continue
        fmt = h.formatter._fmt if h.formatter else None
        batched = BatchedStreamHandler(h.stream)
        batched.setFormatter(_SecondCachedFormatter(fmt))
        batched.setLevel(h.level)
        for f in h.filters:
            batched.addFilter(f)
        root.handlers[i] = batched
