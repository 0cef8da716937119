// A plain node `http` server for the integration tests. Responses without a Content-Length
// are sent chunked by node, which writes them as one writev of many iovecs.
const http = require('http');
const big = 'x'.repeat(100000);
http
  .createServer((req, res) => {
    if (req.url.startsWith('/chunked/big')) {
      res.write('hello ');
      res.write(big);
      res.end('bye');
    } else if (req.url.startsWith('/chunked/small')) {
      res.write('a');
      res.write('b');
      res.end();
    } else if (req.url.startsWith('/fixed')) {
      res.setHeader('Content-Length', '2');
      res.end('ok');
    } else {
      res.statusCode = 404;
      res.end('not found');
    }
  })
  .listen(+process.argv[2], '127.0.0.1');
