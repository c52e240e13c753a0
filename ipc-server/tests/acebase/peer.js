// One real AceBase 1.29 process for ipc-server's compatibility tests.
// usage: node peer.js <role master|worker> <task> <dir> <port> <token> [tag] [count]
// tasks: serve (stay up), write (count records + count increments), read (print totals),
//        subscribe (print value events of events/value), commands (stdin: "set <n>" | "exit")
// Results go to stdout as lines starting with "@@RESULT " (AceBase itself prints every IPC
// message it receives on stdout).
const { AceBase } = require('acebase');
const readline = require('readline');

const [role, task, dir, port, token, tag = 'x', count = '0'] = process.argv.slice(2);
const out = (obj) => process.stdout.write('@@RESULT ' + JSON.stringify(obj) + '\n');

// AceBase 1.29's websocket client calls ws.close(2) in its process 'exit' handler, which throws
// "TypeError: First argument must be a valid error code number". Print it (the test knows it by
// name) and exit with the code we meant.
function finish(code) {
  try {
    process.exit(code);
  } catch (err) {
    console.error(String((err && err.stack) || err));
    process.exit(code);
  }
}

async function main() {
  const db = new AceBase('compat', {
    logLevel: 'warn',
    storage: { path: dir, ipc: { host: '127.0.0.1', port: Number(port), token, role } },
  });
  await db.ready();
  out({ event: 'ready', role });
  const n = Number(count);
  switch (task) {
    case 'serve':
      setInterval(() => {}, 1 << 30);
      return;
    case 'write': {
      const t0 = Date.now();
      for (let i = 0; i < n; i++) await db.ref(`records/${tag}_${i}`).set({ tag, i });
      const t1 = Date.now();
      for (let i = 0; i < n; i++) await db.ref('counter').transaction((snap) => (snap.val() || 0) + 1);
      const t2 = Date.now();
      out({ event: 'done', writes_ms: t1 - t0, increments_ms: t2 - t1 });
      finish(0);
    }
    case 'read': {
      const records = (await db.ref('records').get()).val() || {};
      const counter = (await db.ref('counter').get()).val();
      out({ event: 'read', records: Object.keys(records).length, counter });
      finish(0);
    }
    case 'subscribe':
      db.ref('events/value').on('value', (snap) => {
        const v = snap.val();
        if (v !== null) out({ event: 'value', v });
      });
      setInterval(() => {}, 1 << 30);
      out({ event: 'subscribed' });
      return;
    case 'commands': {
      const rl = readline.createInterface({ input: process.stdin });
      for await (const line of rl) {
        const [cmd, arg] = line.trim().split(' ');
        if (cmd === 'set') {
          await db.ref('events/value').set(Number(arg));
          out({ event: 'set', v: Number(arg) });
        } else if (cmd === 'exit') {
          finish(0);
        }
      }
      return;
    }
    default:
      throw new Error(`unknown task ${task}`);
  }
}

main().catch((err) => {
  console.error('FATAL', (err && err.stack) || err);
  finish(1);
});
