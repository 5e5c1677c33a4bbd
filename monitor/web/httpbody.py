"""A websocket server connection that also takes a small HTTP POST body.

The websockets library parses only body-less requests (a handshake has none). This connection
looks at the first bytes a client sends: for a `POST` it reads the head and a `Content-Length`
body of at most `max_body` bytes itself, keeps the body in `.body`, and hands the head on
without its Content-Length, so the library's own parser, timeouts and `process_request` do
the rest (monitor/server.py answers `POST /api/...` there). Anything else passes untouched.
"""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection

MAX_HEAD = 16 * 1024


class BodyConnection(ServerConnection):
    max_body = 16 * 1024

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sniff: bytearray | None = bytearray()
        self.body: bytes | None = None  # the POST body, once read
        self.body_error: tuple[int, str] | None = None  # (status, why) when it was refused

    def data_received(self, data: bytes) -> None:
        buf = self._sniff
        if buf is None:
            super().data_received(data)
            return
        buf += data
        if not b"POST "[: len(buf)] == bytes(buf[:5]):
            self._pass(bytes(buf))
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._pass(bytes(buf))  # the library refuses an over-long head
            return
        head_lines = bytes(buf[:end]).split(b"\r\n")
        kept, lengths = [], []
        for line in head_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                lengths.append(value.strip())
            else:
                kept.append(line)
        head = b"\r\n".join(kept) + b"\r\n\r\n"
        n = 0
        if lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                self.body_error = (400, "invalid Content-Length")
            else:
                n = int(lengths[0])
                if n > self.max_body:
                    self.body_error = (413, f"body over {self.max_body} bytes")
        if self.body_error is not None:
            self.body = b""
            self._pass(head)
            return
        start = end + 4
        if len(buf) - start < n:
            return  # wait for the rest of the body (the handshake timeout bounds the wait)
        self.body = bytes(buf[start:start + n])
        self._pass(head)

    def _pass(self, data: bytes) -> None:
        self._sniff = None
        super().data_received(data)
