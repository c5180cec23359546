"""An HTTPS upstream that requires a client certificate (mTLS), for castellan's end-to-end tests.

Usage: python3 mtls_upstream.py PORT CERT KEY CA
Answers every GET with JSON naming the client certificate's common name and the path.
"""
import http.server
import json
import ssl
import sys

port, cert, key, ca = sys.argv[1:5]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.connection.getpeercert() or {}
        subject = dict(pair[0] for pair in peer.get("subject", ()))
        body = json.dumps({"client": subject.get("commonName"), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"mtls upstream on 127.0.0.1:{port}", flush=True)
server.serve_forever()
