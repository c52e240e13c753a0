// A minimal Node `ws` relay speaking the AceBase IPC server framing (welcome, connect/disconnect,
// to:<id>; unicast, broadcast, ping/pong, per database), used only as a baseline for the AceBase
// throughput comparison in `bench.js`. No token, no side channel.
// usage: node relay.js <port>   (prints "relay listening on <port>")
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const dbs = new Map(); // db -> Map(id -> socket)
const wss = new WebSocketServer({ port, host: '127.0.0.1', maxPayload: 64 * 1024 * 1024 });
wss.on('connection', (ws, req) => {
  const url = new URL(req.url, 'http://x');
  const db = url.pathname.split('/')[1];
  const id = url.searchParams.get('id');
  if (!dbs.has(db)) dbs.set(db, new Map());
  const peers = dbs.get(db);
  for (const other of peers.values()) other.send(`connect:${id}`);
  peers.set(id, ws);
  ws.send(`welcome:${JSON.stringify({ maxPayload: 16 * 1024 * 1024 })}`);
  ws.on('message', (data) => {
    const str = data.toString();
    if (str === 'ping') return ws.send('pong');
    if (str.startsWith('to:')) {
      const end = str.indexOf(';');
      const to = str.slice(3, end);
      const msg = str.slice(end + 1);
      if (to === 'all') {
        for (const [pid, p] of peers) if (pid !== id) p.send(msg);
      } else {
        const p = peers.get(to);
        if (p) p.send(msg);
      }
      return;
    }
    for (const [pid, p] of peers) if (pid !== id) p.send(str);
  });
  ws.on('close', () => {
    peers.delete(id);
    for (const other of peers.values()) other.send(`disconnect:${id}`);
  });
});
wss.on('listening', () => console.log(`relay listening on ${wss.address().port}`));
