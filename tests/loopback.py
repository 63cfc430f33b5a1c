"""Small HTTP servers on 127.0.0.1 for the tests (stand-ins for workers, graders and an attacker's listener):
started on a free port in a daemon thread, stopped by ``stop``."""
from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Tuple


def serve(handler) -> Tuple[ThreadingHTTPServer, str]:
    """(server, base URL) of ``handler`` (a BaseHTTPRequestHandler class) serving on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    # a short poll, so that ``stop`` returns at once rather than after serve_forever's default half second
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
