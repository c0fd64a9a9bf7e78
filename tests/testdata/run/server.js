// A small HTTP server written without handover (Node.js, no packages), run by the
// tests under `handover run`:
//
// - it serves on the socket the master passes: server.listen({fd: 3}), after checking
//   LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES as sd_listen_fds(3) does;
// - it does not notify (Node has no unix datagram sockets): the master is given
//   -ready-after;
// - on SIGTERM it drains: stops accepting, answers the requests it has with
//   "Connection: close", closes idle keep-alive connections after a grace, exits 0.
//   Not with server.close(): since Node 19 that also closes idle keep-alive
//   connections at once, and a request a client is sending on one at that moment
//   is lost (a POST is not retried); deploy/README.md shows the drain below.
//
// Any method: it reads the request's body, then answers "pid=P lang=node bytes=N"
// with header X-Pid; /slow?ms=N answers after N ms.
'use strict';
const http = require('http');
const net = require('net');

if (process.env.LISTEN_PID !== String(process.pid)) {
  console.error(`server.js: LISTEN_PID=${process.env.LISTEN_PID} is not this process (${process.pid})`);
  process.exit(1);
}
if (process.env.LISTEN_FDS !== '1' || process.env.LISTEN_FDNAMES !== 'http') {
  console.error('server.js: want one socket named http (LISTEN_FDS=1, LISTEN_FDNAMES=http)');
  process.exit(1);
}

let draining = false;
const inflight = new Map(); // socket -> requests in progress

const server = http.createServer((req, res) => {
  const sock = req.socket;
  inflight.set(sock, (inflight.get(sock) || 0) + 1);
  res.on('finish', () => inflight.set(sock, inflight.get(sock) - 1));
  let bytes = 0;
  req.on('data', (chunk) => { bytes += chunk.length; });
  req.on('end', () => {
    const url = new URL(req.url, 'http://localhost');
    const reply = () => {
      const body = `pid=${process.pid} lang=node bytes=${bytes}\n`;
      const headers = { 'X-Pid': String(process.pid), 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
      if (draining) headers.Connection = 'close'; // the client's next request goes to a new connection
      res.writeHead(200, headers);
      res.end(body);
    };
    if (url.pathname === '/slow') setTimeout(reply, Number(url.searchParams.get('ms') || 100));
    else reply();
  });
});
server.keepAliveTimeout = 30000;
server.on('connection', (sock) => {
  inflight.set(sock, 0);
  sock.on('close', () => inflight.delete(sock));
});
server.listen({ fd: 3 });

// The drain (deploy/README.md quotes this block).
process.on('SIGTERM', () => {
  draining = true; // from now on, every response says "Connection: close"
  // Stop accepting: net.Server's close, not http.Server's, which since Node 19 also
  // closes idle keep-alive connections at once, losing a request on its way in.
  net.Server.prototype.close.call(server, () => process.exit(0));
  // Connections still idle after a grace (1s) get no more requests: close them.
  setTimeout(() => {
    for (const [sock, n] of inflight) if (n === 0) sock.destroy();
  }, 1000).unref();
  // Exit at the drain deadline anyway (below handover run's -drain-timeout).
  setTimeout(() => process.exit(0), 10000).unref();
});
