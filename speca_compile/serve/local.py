"""``Service`` behind a stdlib HTTP server in this process, on loopback.

For tests and ``speca loadtest BUNDLE``: the same endpoints and replies as
the Ray Serve deployment (both call ``service``), with nothing to install
beyond the base package.  One thread per connection; each ``/generate``
thread waits for its request's future while the step loop batches them.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.parse
from typing import Iterator

from speca_compile.serve import protocol
from speca_compile.serve.service import Reply, ServeConfig, Service

MAX_BODY_BYTES = 64 * 1024 * 1024


def make_handler(service: Service):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/health":
                return self._send(service.health())
            if url.path == "/stats":
                return self._send(service.stats())
            if url.path == "/example":
                query = urllib.parse.parse_qs(url.query)
                try:
                    index = int(query.get("index", ["0"])[0])
                except ValueError:
                    return self._send(Reply(400, protocol.error_body("index: expected an integer")))
                return self._send(service.example(index))
            self._send(Reply(404, protocol.error_body(f"no endpoint GET {url.path}")))

        def do_POST(self):
            path = urllib.parse.urlsplit(self.path).path
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self.close_connection = True
                return self._send(Reply(413 if length > 0 else 400, protocol.error_body(
                    f"body: Content-Length {self.headers.get('Content-Length')!r} is not a size up to "
                    f"{MAX_BODY_BYTES} bytes")))
            raw = self.rfile.read(length)
            if path != "/generate":
                return self._send(Reply(404, protocol.error_body(f"no endpoint POST {path}")))
            self._send(service.generate(raw))

        def _send(self, reply: Reply) -> None:
            data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):   # quiet: the loop's counters say what happened
            pass

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # the listen backlog: the default 5 resets connections when a burst of clients connects at once
    request_queue_size = 1024


@contextlib.contextmanager
def local_server(bundle, *, mode: str = "step", speculate: bool = True, max_batch: int = 8,
                 max_queue: int = 256, host: str = "127.0.0.1", port: int = 0, model=None) -> Iterator[str]:
    """Serve ``bundle`` on ``host`` at ``port`` (0: a free one); yields the base URL.  The step
    loop and the server stop when the block ends, answering any request still open."""
    service = Service(bundle, ServeConfig(max_batch=max_batch, max_queue=max_queue, mode=mode,
                                          speculate=speculate), model=model)
    server = _Server((host, port), make_handler(service))
    thread = threading.Thread(target=server.serve_forever, name="speca-http", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        service.close()
        server.server_close()
