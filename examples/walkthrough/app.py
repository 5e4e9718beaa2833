"""The walkthrough's API: notes kept as files in a folder mounted from the host, settings from a single mounted file.

Standard library only, so the image needs nothing from PyPI:
  GET  /api/notes          the notes (one file each in /data)
  POST /api/notes          body = text; writes a new note file into /data (it appears in the host folder)
  GET  /api/settings       /config/settings.json, read on every request (replace it on the host and see)
"""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA = os.environ.get("NOTES_DIR", "/data")
SETTINGS = os.environ.get("SETTINGS_FILE", "/config/settings.json")


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/api/notes":
            notes = []
            for name in sorted(os.listdir(DATA)):
                with open(os.path.join(DATA, name)) as f:
                    notes.append({"file": name, "text": f.read().strip()})
            self._send(200, notes)
        elif self.path == "/api/settings":
            with open(SETTINGS) as f:
                self._send(200, json.load(f))
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/api/notes":
            self._send(404, {"error": f"no route {self.path}"})
            return
        text = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        name = f"note-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 1000:03d}.txt"
        with open(os.path.join(DATA, name), "w") as f:
            f.write(text + "\n")
        self._send(201, {"file": name, "text": text})


if __name__ == "__main__":
    # 0.0.0.0, not 127.0.0.1: a published port reaches the container from outside its own loopback
    server = ThreadingHTTPServer(("0.0.0.0", 8000), Handler)
    print("notes API listening on :8000", flush=True)
    server.serve_forever()
