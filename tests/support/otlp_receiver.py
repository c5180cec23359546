"""An OTLP/HTTP trace receiver for the tracing test: decodes each ExportTraceServiceRequest with
the opentelemetry-proto package (OpenTelemetry's own generated code, not castellan's encoder)
and appends every span to a JSON-lines file.

Usage: otlp_receiver.py PORT OUT.jsonl [REFUSE_FIRST]
The first REFUSE_FIRST exports are answered 503, as a collector that is starting up would.
"""
import http.server
import json
import sys

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

port, out = int(sys.argv[1]), sys.argv[2]
refuse = [int(sys.argv[3]) if len(sys.argv) > 3 else 0]


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(415)
            return
        if refuse[0] > 0:
            refuse[0] -= 1
            with open(out + ".refused", "a") as f:
                f.write("503\n")
            self.send_error(503)
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        with open(out, "a") as f:
            for rs in request.resource_spans:
                resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        f.write(json.dumps({
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "name": s.name,
                            "kind": s.kind,
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                            "status": {"code": s.status.code, "message": s.status.message},
                            "flags": s.flags,
                            "scope": ss.scope.name,
                            "resource": resource,
                            "authorization": self.headers.get("Authorization"),
                        }) + "\n")
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
