//! The `ipc-server` binary: parse flags, bind, print one line when listening, tell pm2 we are
//! ready, serve until SIGINT/SIGTERM, exit 0.

use anyhow::Context as _;
use clap::Parser as _;
use ipc_server::{pm2, Config, Server};
use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    // First thing: keep pm2's channel out of any child process.
    let pm2_channel = pm2::Channel::from_env();
    ipc_server::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::parse();
    let settings = match config.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ipc-server: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ipc-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings, pm2_channel)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipc-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    settings: ipc_server::Settings,
    pm2_channel: Option<pm2::Channel>,
) -> anyhow::Result<()> {
    // Signal handlers first, so a SIGINT right after "ready" is a clean shutdown, not a kill.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (host, port) = (settings.host.clone(), settings.port);
    let token = settings.token.is_some();
    let server = Server::bind(settings)
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let url = server.url()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ipc-server listening on {url} (protocol v{}, token {})",
            protocol::PROTOCOL_VERSION,
            if token { "required" } else { "not required" }
        )?;
        out.flush()?;
    }
    if let Some(channel) = pm2_channel {
        channel.notify_ready();
    }
    let stop = async move {
        tokio::select! {
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    };
    server.run(stop).await;
    Ok(())
}
