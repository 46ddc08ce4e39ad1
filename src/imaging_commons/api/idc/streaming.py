"""A page's body written straight from the result's buffers, over raw ASGI."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

import orjson
from fastapi.responses import Response
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ...core.pages import AnyPage


@dataclass(frozen=True)
class PageLayout:
    """Where a page's parts go: {"code", **head, section: {rows_key: [rows], "rowsReturned",
    "totalFound"}, "next_page"}. The rows come before the counts and the token, so that a page
    can be written before they are known."""

    head: dict
    section: str
    rows_key: str


class PageResponse(Response):
    """A page's body: the envelope rendered by orjson, the rows written from the result's own
    buffers in slices. A page can be hundreds of megabytes; joining it into one body would copy
    it twice into fresh memory, and page faults are most of what that costs.

    A page of a complete result is written with its length. The first page of a new query is
    written while the result is being made, as its rows are converted (chunked, from the
    thread pool): the client reads them meanwhile, and only the counts and the token wait for
    the whole result. Meanwhile a space goes out every `keepalive_s` (JSON allows whitespace
    there), so that a result that takes long to finish never leaves the connection looking
    idle. A failure after the first byte can only cut the body short."""

    media_type = "application/json"
    slice_bytes = 1 << 20
    keepalive_s = 5.0

    def __init__(self, layout: PageLayout, page: AnyPage, token: Callable[[], str | None]):
        self.head = (orjson.dumps({"code": 200, **layout.head})[:-1] + b","
                     + orjson.dumps(layout.section) + b":{"
                     + orjson.dumps(layout.rows_key) + b":")
        self.page = page
        self.token = token
        headers, self.parts = {}, None
        if page.complete:  # the counts and the token now, where a failure is still an answer
            self.parts = [self.head, *page.rows_json(), self._tail()]
            headers["content-length"] = str(sum(len(part) for part in self.parts))
        self.status_code, self.background = 200, None
        self.init_headers(headers)  # (it has no `body`: no length of its own)

    def _tail(self) -> bytes:
        return (b',"rowsReturned":%d,"totalFound":%d},"next_page":%s}'
                % (self.page.returned, self.page.total, orjson.dumps(self.token())))

    async def _arriving_slices(self) -> AsyncIterator[bytes]:
        rows = itertools.chain([self.head], self.page.rows_json())  # waits for rows to come
        async for piece in iterate_in_threadpool(joined_slices(rows, self.slice_bytes)):
            yield piece
        while not await run_in_threadpool(self.page.finished, self.keepalive_s):
            yield b" "
        yield await run_in_threadpool(self._tail)

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        if self.parts is not None:
            slices = as_async(joined_slices(self.parts, self.slice_bytes))
        else:
            slices = self._arriving_slices()
        current = await anext(slices)
        async for following in slices:
            await send({"type": "http.response.body", "body": current, "more_body": True})
            current = following
        await send({"type": "http.response.body", "body": current})


async def as_async(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    """Items at hand, as an async iterator (nothing in them waits)."""
    for item in items:
        yield item


def joined_slices(parts: Iterable[bytes | memoryview], size: int) -> Iterator[bytes]:
    """The parts' bytes back to back, cut into slices of `size`; the last one is shorter (and
    may be empty). A small page goes out as one slice, a large one in pieces of equal size."""
    pending: list[memoryview] = []
    held = 0
    for part in parts:
        view = memoryview(part)
        while len(view):
            piece = view[:size - held]
            pending.append(piece)
            held += len(piece)
            view = view[len(piece):]
            if held == size:
                yield b"".join(pending)
                pending, held = [], 0
    yield b"".join(pending)
