// node's `https` module (OpenSSL linked into the node binary, memory BIOs): counts what it
// answers by status, and reports the counts over plain HTTP on a second port.
// Usage: node node-https-server.js TLS_PORT COUNT_PORT CERT KEY
const fs = require('fs');
const http = require('http');
const https = require('https');

const [tlsPort, countPort, cert, key] = process.argv.slice(2);
const answered = {};

https
  .createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      let status = 200;
      if (req.url.startsWith('/missing')) status = 404;
      else if (req.method === 'POST') status = 201;
      answered[status] = (answered[status] || 0) + 1;
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(`answer to ${req.method} ${req.url} (${body.length} bytes in)\n`);
    });
  })
  .listen(Number(tlsPort), '127.0.0.1');

http
  .createServer((req, res) => res.end(JSON.stringify(answered)))
  .listen(Number(countPort), '127.0.0.1');
