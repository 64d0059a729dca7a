"""A streamed upstream body handed to the relay the moment each piece arrives, instead of
the relay waking up to read it.

Why: relaying a stream read by read (aiohttp's `readany`) wakes the request's task for
every upstream read, and every wake-up resumes the whole chain of coroutines that serves
the request. That wake-up cost more than everything else the relay does per read, and
kept a stream well above the bare pass-through's CPU (docs/performance.md). Offered each
piece as it arrives, the relay translates it and writes it to the client at once, from
aiohttp's own callback; the request's task sleeps until the stream ends or the relay
hands a piece back.

How, and what it relies on: aiohttp's response parser (the C parser and the Python one)
gives every piece of a body to the response's `StreamReader` through `feed_data`.
`attach` switches that reader's class to a subclass whose `feed_data` first offers the
piece to a sink; a piece the sink declines (it returns False) is buffered as usual and
wakes the reader, so anything the sink cannot do now (a client that is slow to read, a
stream that failed) goes the ordinary way. The end of the body, a broken connection and
aiohttp's timeouts reach the reader as before, since only `feed_data` is overridden.
This is the one module that leans on how aiohttp delivers a body; pyproject.toml pins
aiohttp to the releases it was checked against (`CHECKED_AIOHTTP`), and
tests/pipeline/test_pushed_body.py fails loudly on any other release or when the parser
stops delivering through `feed_data`.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

# The aiohttp releases this module was checked against (pyproject.toml pins the same).
CHECKED_AIOHTTP = ((3, 14), (3, 15))        # 3.14.x

# Takes one piece of the body; False hands it back to be read the ordinary way.
Sink = Callable[[bytes], bool]

_sinks: dict[aiohttp.StreamReader, Sink] = {}


class _OfferingReader(aiohttp.StreamReader):
    """aiohttp's reader, offering each piece to the attached sink before buffering it.
    No slots of its own, so that a reader's class can be switched to it."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        sink = _sinks.get(self)
        if sink is not None and data and sink(data):
            return False
        return aiohttp.StreamReader.feed_data(self, data, size)


def attach(reader: aiohttp.StreamReader, sink: Sink) -> bool:
    """Offers each piece `reader` receives from now on to `sink`; False (and nothing
    changed) for a reader of another kind, which is then read the ordinary way."""
    if reader.__class__ is aiohttp.StreamReader:
        reader.__class__ = _OfferingReader
    elif reader.__class__ is not _OfferingReader:
        return False
    _sinks[reader] = sink
    return True


def detach(reader: aiohttp.StreamReader) -> None:
    """Pieces go to `reader`'s buffer again. Safe to call more than once."""
    _sinks.pop(reader, None)
