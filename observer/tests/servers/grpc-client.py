"""gRPC calls for the observer's tests, over one channel (one HTTP/2 connection).

Usage: grpc-client.py PORT unary OK MISSING FAIL   (that many Get calls of each kind, interleaved
       from 4 threads so several streams run at once)
       grpc-client.py PORT watch                   (one 2 s Watch stream; prints its seconds)
"""

import sys
import time
from concurrent import futures

import grpc

port, mode = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
identity = lambda b: b
get = channel.unary_unary("/observer.test.Boot/Get", request_serializer=identity, response_deserializer=identity)
watch = channel.unary_stream("/observer.test.Boot/Watch", request_serializer=identity, response_deserializer=identity)


def call(payload):
    try:
        get(payload, timeout=10)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


if mode == "unary":
    ok, missing, fail = (int(n) for n in sys.argv[3:6])
    payloads = [b"hello"] * ok + [b"missing"] * missing + [b"fail"] * fail
    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(call, payloads))
    print(" ".join(f"{c}={codes.count(c)}" for c in sorted(set(codes))))
else:
    started = time.monotonic()
    ticks = sum(1 for _ in watch(b"", timeout=10))
    print(f"{ticks} {time.monotonic() - started:.3f}")
