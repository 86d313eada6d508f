"""Reading a request's body in a middleware and handing it on: the decision fast path and the batch-size guard
both look at the body before FastAPI does, and whatever they do not answer goes on with the body replayed."""

from __future__ import annotations

from starlette.types import Message, Receive


async def read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """(the whole body, a `receive` for the next app that hands it out again); the body is None when the client
    disconnected before its end (the replay then ends in that disconnect, for FastAPI's handler to deal with)."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None, _replay(b"".join(chunks), receive, message)
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    raw = b"".join(chunks)
    return raw, _replay(raw, receive)


def _replay(raw: bytes, receive: Receive, then: Message | None = None) -> Receive:
    """`receive` that hands the already-read body out again, then `then` (if any), then the real channel."""
    # before a disconnect the body was incomplete: more_body stays True so Starlette sees the disconnect next
    pending = [{"type": "http.request", "body": raw, "more_body": then is not None}] + ([then] if then else [])

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
