// A small HTTP server written without handover (Node.js, no packages), run by the
// tests under `handover run`:
//
// - it serves on the socket the master passes: server.listen({fd: 3}), after checking
//   LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES as sd_listen_fds(3) does;
// - it does not notify (Node has no unix datagram sockets): the master is given
//   -ready-after;
// - on SIGTERM it drains: stops accepting, answers the requests it has with
//   "Connection: close", closes idle keep-alive connections after a grace, exits 0.
//
// GET / answers "pid=P lang=node" with header X-Pid; GET /slow?ms=N after N ms.
'use strict';
const http = require('http');
const net = require('net');

const GRACE = 1000; // ms idle keep-alive connections may still send a request
const DRAIN = 10000; // ms before exiting anyway

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
  const url = new URL(req.url, 'http://localhost');
  const reply = () => {
    const body = `pid=${process.pid} lang=node\n`;
    const headers = { 'X-Pid': String(process.pid), 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) };
    if (draining) headers.Connection = 'close';
    res.writeHead(200, headers);
    res.end(body);
  };
  if (url.pathname === '/slow') setTimeout(reply, Number(url.searchParams.get('ms') || 100));
  else reply();
});
server.keepAliveTimeout = 30000;
server.on('connection', (sock) => {
  inflight.set(sock, 0);
  sock.on('close', () => inflight.delete(sock));
});
server.listen({ fd: 3 });

process.on('SIGTERM', () => {
  draining = true;
  // Stop accepting. net.Server's close, not http.Server's: that one also closes idle
  // keep-alive connections at once, racing with requests already on their way.
  net.Server.prototype.close.call(server, () => process.exit(0));
  setTimeout(() => {
    for (const [sock, n] of inflight) if (n === 0) sock.destroy();
  }, GRACE).unref();
  setTimeout(() => process.exit(0), DRAIN).unref();
});
