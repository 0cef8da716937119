"""A gRPC server for the observer's tests (grpcio, generic handlers: no protoc needed).

Service `observer.test.Boot`:
- `Get` (unary): echoes the request; `missing` → NOT_FOUND, `fail` → INTERNAL.
- `Watch` (server streaming): 10 messages, 0.2 s apart (2 s in all).

Counting interceptor: every call that ends is appended to LOG as `method code`, the server's
own count. Usage: grpc-server.py PORT LOG
"""

import sys
import threading
import time
from concurrent import futures

import grpc

PORT, LOG = sys.argv[1], sys.argv[2]
lock = threading.Lock()


def logged(method, code):
    with lock, open(LOG, "a") as log:
        log.write(f"{method} {code}\n")


def get(request, context):
    if request == b"missing":
        logged("Get", "NotFound")
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"fail":
        logged("Get", "Internal")
        context.abort(grpc.StatusCode.INTERNAL, "it broke")
    logged("Get", "OK")
    return request


def watch(request, context):
    for i in range(10):
        time.sleep(0.2)
        yield b"tick %d" % i
    logged("Watch", "OK")


identity = lambda b: b
handlers = grpc.method_handlers_generic_handler(
    "observer.test.Boot",
    {
        "Get": grpc.unary_unary_rpc_method_handler(get, identity, identity),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, identity, identity),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handlers,))
server.add_insecure_port(f"127.0.0.1:{PORT}")
server.start()
server.wait_for_termination()
