"""Serving a page directory on 127.0.0.1: GET and HEAD of files inside it, nothing else."""
from __future__ import annotations

import functools
import http.server
import urllib.parse
from pathlib import Path

HOST = "127.0.0.1"  # never another interface: the page shows the run's data


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler without directory listings, and with every path checked to resolve
    (symlinks followed) inside the page directory. It has no write methods (POST, PUT: 501)."""

    def send_head(self):
        root = Path(self.directory).resolve()
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        target = (root / path.lstrip("/")).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(root) or not target.is_file():
            self.send_error(404, "not found")
            return None
        self.path = "/" + target.relative_to(root).as_posix()
        return super().send_head()

    def list_directory(self, path):
        self.send_error(404, "not found")
        return None

    def log_message(self, format, *args):  # quiet: one line per request would drown the URL
        pass


def server(directory: Path, port: int = 8050) -> http.server.ThreadingHTTPServer:
    """A server for `directory` on 127.0.0.1:port (0: any free port); call serve_forever() on it."""
    handler = functools.partial(PageHandler, directory=str(directory))
    return http.server.ThreadingHTTPServer((HOST, port), handler)
