//! The command-line client: `connstate clients|devices|device-types|keys|
//! status`, talking to a running server. Queries, logs and watches go over
//! gRPC ([`crate::pb`]); the registry (devices, device types, API keys) and
//! the administrative disconnect, which have no gRPC call, over the REST
//! gateway.
//!
//! It sits above everything else in the crate and uses only the generated
//! API types, the configuration file's layer (to find the listeners) and the
//! time parsing of the REST edge. Nothing in the server uses it.
//!
//! Output is a table for people and, with `--json`, one JSON document for
//! scripts (one object per line for a watch). The exit code says how it
//! went ([`Exit`]); an error is one line on standard error.

mod clients;
mod endpoint;
mod output;
mod registry;
mod rest;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand};

pub use self::clients::ClientsCommand;
use self::{
    endpoint::Endpoints,
    registry::{DeviceTypesCommand, DevicesCommand, KeysCommand},
};

/// The client's subcommands, flattened into the binary's own.
// Parsed once per run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connection states, logs and live changes of MQTT clients; disconnect one
    Clients {
        #[command(flatten)]
        options: Options,
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Registered devices and gateways (auth mode: their tokens)
    Devices {
        #[command(flatten)]
        options: Options,
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Device types of the registry
    DeviceTypes {
        #[command(flatten)]
        options: Options,
        #[command(subcommand)]
        command: DeviceTypesCommand,
    },
    /// API keys and their roles (administrators)
    Keys {
        #[command(flatten)]
        options: Options,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Health, current revision and client counts of a running server
    Status {
        #[command(flatten)]
        options: Options,
    },
}

/// Where the server is, who is asking, and how to print.
///
/// Each setting comes from its flag, else its environment variable, else
/// the server's configuration file (`--config`), else the server's
/// defaults.
#[derive(Args, Debug, Clone)]
pub struct Options {
    /// gRPC address of the server: HOST:PORT, http://HOST:PORT or
    /// https://HOST:PORT (TLS) [default: from --config, else 127.0.0.1:50051]
    #[arg(long, env = "CONNSTATE_ADDRESS", global = true, value_name = "ADDRESS")]
    pub address: Option<String>,
    /// REST address of the server (registry, disconnect, counts), as
    /// --address [default: from --config, else 127.0.0.1:8080]
    #[arg(
        long,
        env = "CONNSTATE_REST_ADDRESS",
        global = true,
        value_name = "ADDRESS"
    )]
    pub rest_address: Option<String>,
    /// API key (auth mode), with --api-token [default: admin_key of --config]
    #[arg(long, env = "CONNSTATE_API_KEY", global = true)]
    pub api_key: Option<String>,
    /// Token of --api-key [default: admin_token of --config]
    #[arg(
        long,
        env = "CONNSTATE_API_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// The server's TOML configuration file: the addresses come from its
    /// listeners, the credentials from its admin key, the CA from its
    /// certificate
    #[arg(long, env = "CONNSTATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// PEM certificate authority for https:// addresses [default:
    /// tls_cert of --config]
    #[arg(long, env = "CONNSTATE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// How long each call may take, e.g. 30s
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print JSON for scripts instead of a table (a watch: one object per line)
    #[arg(long, global = true)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than zero".into()),
        Err(e) => Err(format!("{e}; write e.g. 500ms, 10s, 2m")),
    }
}

/// The exit codes scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The client, device, device type or API key does not exist.
    NotFound = 1,
    /// Bad flags or arguments (clap's own code for usage errors), or a
    /// value the server refused as invalid.
    Usage = 2,
    /// The server cannot be reached or is not serving, or it refused the
    /// credentials or the key's role.
    Unavailable = 3,
    /// The server refused the request for another reason: it exists
    /// already, the client is not connected here, the feature is off, a
    /// server error.
    Refused = 4,
}

/// Why a command failed: the exit code and one line for standard error.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Usage, message)
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Failure {
        use tonic::Code;
        let exit = match status.code() {
            Code::NotFound => Exit::NotFound,
            Code::InvalidArgument | Code::OutOfRange => Exit::Usage,
            Code::Unavailable
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::DeadlineExceeded => Exit::Unavailable,
            _ => Exit::Refused,
        };
        // The transport's own cause ("Connection refused") is in the
        // source chain, not in the message.
        let mut root = None;
        let mut source = std::error::Error::source(&status);
        while let Some(e) = source {
            root = Some(e.to_string());
            source = e.source();
        }
        let cause = match root {
            Some(root) if !status.message().contains(&root) => {
                format!("{}: {root}", status.message())
            }
            _ => status.message().to_owned(),
        };
        let message = match status.code() {
            Code::Unavailable => format!("{GRPC_DOWN}: {cause}"),
            Code::DeadlineExceeded => format!("no answer in time: {}", status.message()),
            _ => status.message().to_owned(),
        };
        Failure::new(exit, message)
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

/// How an UNAVAILABLE answer starts; [`dispatch`] adds the address.
const GRPC_DOWN: &str = "cannot reach the gRPC server";

/// Runs one client command to its end; returns its exit code after
/// printing any error on standard error.
pub fn run(command: Command) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("connstate: cannot start: {e}");
            return Exit::Refused as u8;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => Exit::Ok as u8,
        Err(failure) => {
            eprintln!("connstate: {}", failure.message);
            failure.exit as u8
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    let options = match &command {
        Command::Clients { options, .. }
        | Command::Devices { options, .. }
        | Command::DeviceTypes { options, .. }
        | Command::Keys { options, .. }
        | Command::Status { options } => options.clone(),
    };
    let endpoints = Endpoints::resolve(&options)?;
    let result = match command {
        Command::Clients { command, .. } => clients::run(&endpoints, &options, command).await,
        Command::Devices { command, .. } => registry::devices(&endpoints, &options, command).await,
        Command::DeviceTypes { command, .. } => {
            registry::device_types(&endpoints, &options, command).await
        }
        Command::Keys { command, .. } => registry::keys(&endpoints, &options, command).await,
        Command::Status { .. } => status(&endpoints, &options).await,
    };
    result.map_err(|mut failure| {
        if let Some(rest) = failure.message.strip_prefix(GRPC_DOWN) {
            failure.message = format!("{GRPC_DOWN} at {}{rest}", endpoints.grpc_address());
        }
        failure
    })
}

/// `connstate status`: health, revision and counts.
async fn status(endpoints: &Endpoints, options: &Options) -> Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let mut health = tonic_health::pb::health_client::HealthClient::new(endpoints.channel()?);
    let serving = health
        .check(endpoints.request(HealthCheckRequest {
            service: String::new(),
        }))
        .await?
        .into_inner()
        .status();
    let serving = match serving {
        ServingStatus::Serving => "serving",
        ServingStatus::NotServing => "not serving",
        _ => "unknown",
    };
    let mut states = endpoints.states()?;
    // The connected clients are counted page by page (the index answers
    // each page quickly); the total comes from the REST listing's count.
    let mut connected = 0u64;
    let mut revision = None;
    let mut page_token = String::new();
    loop {
        let page = states
            .list_connection_states(endpoints.request(crate::pb::ListConnectionStatesRequest {
                filter: Some(crate::pb::ConnectionStateFilter {
                    connection_status: crate::pb::ConnectionStatus::Connected as i32,
                    ..Default::default()
                }),
                order_by: String::new(),
                page_size: 1000,
                page_token: page_token.clone(),
            }))
            .await?
            .into_inner();
        revision.get_or_insert(page.revision);
        connected += page.states.len() as u64;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let listing = endpoints
        .rest()?
        .get("/api/v0002/clientconnectionstates?_limit=1")
        .await?;
    let total = listing["meta"]["total_rows"].as_u64().unwrap_or_default();
    let revision = revision.unwrap_or_default();
    if options.json {
        output::print_json(&serde_json::json!({
            "health": serving,
            "revision": revision,
            "connected": connected,
            "total": total,
            "grpc": endpoints.grpc_address(),
            "rest": endpoints.rest_address(),
        }));
    } else {
        output::print_fields(&[
            ("health", serving.to_owned()),
            ("revision", revision.to_string()),
            ("connected", connected.to_string()),
            ("total", total.to_string()),
            ("grpc", endpoints.grpc_address().to_owned()),
            ("rest", endpoints.rest_address().to_owned()),
        ]);
    }
    if serving == "serving" {
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Unavailable,
            format!("the server is {serving}"),
        ))
    }
}
