//! The `connstate` command: parses the configuration, sets up logging,
//! binds the listeners and hands over to the library.

use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use connstate::{Config, Listeners, config::ConfigLayer, mqtt::MqttListeners};

#[derive(Parser)]
#[command(
    name = "connstate",
    version,
    about = "Client-connection-state service for MQTT fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// TOML file with the same keys as the flags (lower precedence than
        /// environment and flags)
        #[arg(long, env = "CONNSTATE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        layer: ConfigLayer,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sled=warn,h2=warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve { config, layer } = cli.command;
    raise_open_file_limit();
    let file = config
        .as_deref()
        .map(ConfigLayer::from_file)
        .transpose()?
        .unwrap_or_default();
    let config = Config::from_layers([&file, &layer])?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

/// Every connection takes a file descriptor, and the usual soft limit (1024)
/// is far below what a broker holds: take the hard limit.
fn raise_open_file_limit() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => tracing::info!("open file limit {now} (was {soft}, hard limit {hard})"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open file limit")
            }
        },
        Err(e) => tracing::warn!(error = %e, "cannot read the open file limit"),
    }
}

/// Pending connections each MQTT listener queues (capped by the kernel's
/// `net.core.somaxconn`).
const MQTT_ACCEPT_BACKLOG: u32 = 1024;

async fn serve(config: Config) -> anyhow::Result<()> {
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.grpc_listen))?;
    let rest = tokio::net::TcpListener::bind(config.rest_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.rest_listen))?;
    // MQTT listeners get a deep accept queue: when a fleet reconnects at
    // once, a full queue drops SYNs and each costs its client a second.
    let bind = |addr: std::net::SocketAddr| async move {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(addr)
            .and_then(|()| socket.listen(MQTT_ACCEPT_BACKLOG))
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let mqtt = MqttListeners {
        tcp: Some(bind(config.mqtt_listen).await?),
        tls: match config.tls {
            Some(_) => Some(bind(config.mqtt_tls_listen).await?),
            None => None,
        },
        ws: Some(bind(config.mqtt_ws_listen).await?),
    };
    // Stable lines for scripts and tests that start the binary on port 0.
    // A reader that stopped listening must not stop the server.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "connstate grpc listening on {}", grpc.local_addr()?);
        let _ = writeln!(out, "connstate rest listening on {}", rest.local_addr()?);
        for (name, listener) in [
            ("mqtt", &mqtt.tcp),
            ("mqtt-tls", &mqtt.tls),
            ("mqtt-ws", &mqtt.ws),
        ] {
            if let Some(l) = listener {
                let _ = writeln!(out, "connstate {name} listening on {}", l.local_addr()?);
            }
        }
        let _ = out.flush();
    }
    connstate::run(
        Listeners {
            grpc,
            rest: Some(rest),
            mqtt,
        },
        config,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// SIGINT or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
