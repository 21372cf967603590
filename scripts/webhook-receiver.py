#!/usr/bin/env python3
"""A webhook receiver for trying the service out (README, "A first session"): it
listens on 127.0.0.1, checks each delivery's Standard Webhooks signature with the
webhook's secret, prints one line per event and answers 204.

    WEBHOOK_SECRET=whsec_... python3 scripts/webhook-receiver.py [PORT]   (default 9000)

Only the Python standard library: a real receiver would rather use a Standard Webhooks
library, which also rejects stale timestamps and replays (by webhook-id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = base64.b64decode(os.environ["WEBHOOK_SECRET"].removeprefix("whsec_"))


def signature_ok(message_id: str, timestamp: str, body: bytes, header: str) -> bool:
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(SECRET, signed, hashlib.sha256).digest()).decode()
    # The header may carry several space-separated signatures ("v1,<base64>").
    return any(hmac.compare_digest(part.removeprefix("v1,"), expected) for part in header.split())


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ok = signature_ok(
            self.headers.get("webhook-id", ""),
            self.headers.get("webhook-timestamp", ""),
            body,
            self.headers.get("webhook-signature", ""),
        )
        event = json.loads(body)
        verdict = "signature ok" if ok else "BAD SIGNATURE"
        print(f"{verdict}: {event['type']} (event {event['id']}, {self.headers.get('webhook-id')})", flush=True)
        self.send_response(204 if ok else 400)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per event is printed above


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"listening on http://127.0.0.1:{port}/hook", flush=True)
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
