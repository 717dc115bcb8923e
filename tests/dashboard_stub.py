"""A stand-in for ``python -m zfutures.dashboard`` in launch's tests.

It takes the same arguments, serves HTTP on the listening socket it was
handed (every GET answers, as JSON, the arguments and the parent pid it was
started with), and exits on SIGTERM: what launch promises the real process,
seen from the outside, without the center or aiohttp.
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import sys
import threading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--center", required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--token")
    parser.add_argument("--keys")
    parser.add_argument("--log-level")
    args = parser.parse_args()
    listener = socket.socket(fileno=args.listen_fd)
    listening = listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    answer = json.dumps({"argv": sys.argv[1:], "parent_pid": os.environ.get("ZFUTURES_PARENT_PID"),
                         "token": os.environ.get("ZFUTURES_DASHBOARD_TOKEN"),
                         "listening": bool(listening)}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(listener.getsockname()[:2], Handler,
                                    bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    # shutdown() waits for serve_forever: call it from another thread.
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
