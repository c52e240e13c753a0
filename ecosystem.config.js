// pm2 example: one ipc-server and a pool of processes that use it.
// Start with `pm2 start ecosystem.config.js`; build first with `cargo build --release`.
module.exports = {
  apps: [
    {
      name: 'ipc-server',
      script: './target/release/ipc-server',
      interpreter: 'none',          // a native binary, not a Node script
      exec_mode: 'fork',
      wait_ready: true,             // the server writes "ready" to pm2's channel once it listens
      listen_timeout: 5000,
      kill_timeout: 1600,           // SIGINT, then SIGKILL after this; the server exits well before
      autorestart: true,
      exp_backoff_restart_delay: 100,
      env: {
        IPC_PORT: '9163',
        IPC_HOST: '127.0.0.1',
        // IPC_TOKEN_FILE: '/etc/ipc/token',   // require a token
        // IPC_TLS_CERT: '/etc/ipc/cert.pem', IPC_TLS_KEY: '/etc/ipc/key.pem',
        RUST_LOG: 'info',
      },
    },
    {
      // Example peers: each instance joins namespace "demo" as worker-<instance number>,
      // subscribes to jobs.> and answers requests by echoing them.
      name: 'worker',
      script: './target/release/ipc-peer',
      interpreter: 'none',
      instances: 2,
      exec_mode: 'fork',
      // No --id: under pm2 the peer id defaults to <name>-<NODE_APP_INSTANCE> (worker-0, worker-1).
      args: '--namespace demo --subscribe jobs.> --echo',
      env: { IPC_URL: 'ws://127.0.0.1:9163' },
    },
  ],
};
