"""python's http.server behind python's ssl module (libssl.so.3, socket BIO, SSL_read_ex /
SSL_write_ex), HTTP/1.1 keep-alive; logs each request it answers to stderr.
Usage: python3 python-https-server.py PORT DIRECTORY CERT KEY"""
import functools
import http.server
import ssl
import sys

port, directory, cert, key = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = http.server.HTTPServer(("127.0.0.1", int(port)), functools.partial(Handler, directory=directory))
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
