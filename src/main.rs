//! The `connstate` command: `serve` parses the configuration, sets up
//! logging, binds the listeners and hands over to the library; the client
//! subcommands (`clients`, `devices`, `status`, ...) hand over to
//! [`connstate::cli`]; `completions` prints a shell's completion script.

mod allocator;

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
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

// Parsed once per run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
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
    #[command(flatten)]
    Client(connstate::cli::Command),
    /// Print the completion script of a shell: bash, zsh or fish
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The end of `connstate completions --help`.
const COMPLETIONS_HELP: &str = "\
Install, e.g.: connstate completions bash > ~/.local/share/bash-completion/completions/connstate; \
connstate completions zsh > \"${fpath[1]}/_connstate\"; \
connstate completions fish > ~/.config/fish/completions/connstate.fish";

/// The end of `connstate serve --help`.
const SERVE_HELP: &str = "\
Listeners: every --*-listen flag takes IP:PORT, localhost:PORT (127.0.0.1) or off, \
so e.g. `--mqtt-listen off --mqtt-ws-listen off` leaves MQTT over TLS only.

Logging: RUST_LOG chooses what is logged to standard error, as tracing's env filter \
[default: info,sled=warn,h2=warn]; e.g. RUST_LOG=debug, or \
RUST_LOG=info,connstate::mqtt=debug for one module.";

fn main() -> ExitCode {
    allocator::configure();
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Client(command) => return ExitCode::from(connstate::cli::run(command)),
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "connstate", &mut script);
            // A closed pipe (`| head`) is not worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return ExitCode::SUCCESS;
        }
        command @ Command::Serve { .. } => Cli { command },
    };
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
    let Command::Serve { config, layer } = cli.command else {
        unreachable!("main hands only serve here");
    };
    raise_open_file_limit();
    let file = config
        .as_deref()
        .map(ConfigLayer::from_file)
        .transpose()?
        .unwrap_or_default();
    let config = Config::from_layers([&file, &layer])?;
    tokio::runtime::Builder::new_multi_thread()
        .on_thread_park(connstate::idle::idle)
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
