// node's `http2` module, in clear text (`createServer`, prior knowledge) and over TLS
// (`createSecureServer`, ALPN h2, OpenSSL in the node binary with memory BIOs): counts what
// it answers by status, and reports the counts over plain HTTP/1 on a third port.
// `/slow` writes part of its body, then resets the stream mid-response (RST_STREAM).
// Usage: node node-http2-server.js H2C_PORT TLS_PORT COUNT_PORT CERT KEY
const fs = require('fs');
const http = require('http');
const http2 = require('http2');

const [h2cPort, tlsPort, countPort, cert, key] = process.argv.slice(2);
const answered = {};

function handle(req, res) {
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    if (req.url.startsWith('/reset')) {
      answered.reset = (answered.reset || 0) + 1;
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('a first part of the body\n');
      setTimeout(() => req.stream.close(http2.constants.NGHTTP2_CANCEL), 50);
      return;
    }
    let status = 200;
    if (req.url.startsWith('/missing')) status = 404;
    else if (req.method === 'POST') status = 201;
    answered[status] = (answered[status] || 0) + 1;
    res.writeHead(status, { 'content-type': 'text/plain' });
    res.end(`answer to ${req.method} ${req.url} (${body.length} bytes in)\n`);
  });
}

http2.createServer(handle).listen(Number(h2cPort), '127.0.0.1');
http2
  .createSecureServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, handle)
  .listen(Number(tlsPort), '127.0.0.1');
http
  .createServer((req, res) => res.end(JSON.stringify(answered)))
  .listen(Number(countPort), '127.0.0.1');
