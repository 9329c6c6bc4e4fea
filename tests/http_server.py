"""A local HTTP server on 127.0.0.1 for tests that download (they never reach the internet)."""
from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``directory``; a file named in ``server.broken`` is cut off halfway with a dropped
    connection (a file that is not there answers 404). Requests are recorded in ``server.requests``."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        name = self.path.lstrip("/").split("?")[0]
        self.server.requests.append(name)
        if name in self.server.broken:
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        super().do_GET()


@contextlib.contextmanager
def serve(directory: Path, broken=()):
    """``with serve(folder) as server:`` serves ``folder`` at ``server.url`` ("http://127.0.0.1:PORT")."""
    handler = functools.partial(Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests, server.broken = [], set(broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield server
    finally:
        server.shutdown()
        server.server_close()
