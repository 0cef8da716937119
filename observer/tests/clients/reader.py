"""An HTTP/1.1 client for the transfer tests: GETs PATH COUNT times on one connection, reading
each body at RATE bytes/s (0: as fast as it comes) through a receive buffer of RCVBUF bytes
(0: the kernel's autotuning), over TLS if a fifth argument `tls` is given (certificate not
checked), then says so on stdout and keeps the connection open until a line arrives on
stdin, so that `ss -ti` can read the server's socket before it closes."""

import socket
import ssl
import sys
import time

host, port, path, count, rate, rcvbuf = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
s = socket.socket()
if rcvbuf:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
s.connect((host, port))
if sys.argv[7:] == ["tls"]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    s = context.wrap_socket(s)
pending = b""
for _ in range(count):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    while b"\r\n\r\n" not in pending:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("closed before the response head")
        pending += chunk
    head, pending = pending.split(b"\r\n\r\n", 1)
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    got, start = len(pending), time.monotonic()
    while got < length:
        n = len(s.recv(min(16384, length - got)))
        if n == 0:
            sys.exit("closed before the end of the body")
        got += n
        ahead = got / rate - (time.monotonic() - start) if rate else 0
        if ahead > 0:
            time.sleep(ahead)
    pending = b""
print("done", flush=True)
sys.stdin.readline()
s.close()
