//! The `connstate` command: parses the configuration, sets up logging,
//! binds the listeners and hands over to the library.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use connstate::{Config, Listeners, config::ConfigLayer, mqtt::MqttListeners};
use tokio::net::TcpListener;

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
    #[command(after_help = SERVE_HELP)]
    Serve {
        /// TOML file with the same keys as the flags (lower precedence than
        /// environment and flags)
        #[arg(long, env = "CONNSTATE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        layer: ConfigLayer,
    },
}

/// The end of `connstate serve --help`.
const SERVE_HELP: &str = "\
Listeners: every --*-listen flag takes IP:PORT, localhost:PORT (127.0.0.1) or off, \
so e.g. `--mqtt-listen off --mqtt-ws-listen off` leaves MQTT over TLS only.

Logging: RUST_LOG chooses what is logged to standard error, as tracing's env filter \
[default: info,sled=warn,h2=warn]; e.g. RUST_LOG=debug, or \
RUST_LOG=info,connstate::mqtt=debug for one module.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG.into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match start(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each error's message already says what went wrong and why.
            eprintln!("connstate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What is logged when `RUST_LOG` is not set.
const DEFAULT_LOG: &str = "info,sled=warn,h2=warn";

fn start(cli: Cli) -> anyhow::Result<()> {
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

/// Pending connections each listener queues (capped by the kernel's
/// `net.core.somaxconn`): when a fleet reconnects at once, a full queue
/// drops SYNs and each costs its client a second.
const ACCEPT_BACKLOG: u32 = 1024;

/// Binds one listener unless it is off; an error names the listener and
/// its flag.
async fn bind(
    what: &str,
    flag: &str,
    addr: Option<SocketAddr>,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(ACCEPT_BACKLOG)
    })();
    match bound {
        Ok(listener) => Ok(Some(listener)),
        Err(e) => anyhow::bail!(
            "{what} listener ({flag}) cannot listen on {addr}: {e}; \
             choose another address with {flag}, or switch it off with {flag} off"
        ),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = anyhow::Context::context(
        shutdown_signal(),
        "installing the SIGINT and SIGTERM handlers",
    )?;
    let grpc = bind("gRPC", "--grpc-listen", config.grpc_listen).await?;
    let rest = bind("REST", "--rest-listen", config.rest_listen).await?;
    let mqtt = MqttListeners {
        tcp: bind("MQTT", "--mqtt-listen", config.mqtt_listen).await?,
        tls: match config.tls {
            Some(_) => bind("MQTT over TLS", "--mqtt-tls-listen", config.mqtt_tls_listen).await?,
            None => None,
        },
        ws: bind(
            "MQTT over WebSocket",
            "--mqtt-ws-listen",
            config.mqtt_ws_listen,
        )
        .await?,
    };
    // The library announces the listeners once they serve.
    connstate::run(Listeners { grpc, rest, mqtt }, config, shutdown).await?;
    Ok(())
}

/// SIGINT or SIGTERM, whichever comes first. The handlers are installed
/// here, before anything binds: a signal that arrives as soon as the
/// listeners are announced must start a graceful shutdown, not meet the
/// default action that kills the process.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
