//! `connstate devices|device-types|keys`: the registry, over the REST
//! gateway (it has no gRPC calls). `--json` prints the gateway's own JSON.

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::{
    Options, Result,
    endpoint::Endpoints,
    output::{self, Table},
    rest::segment,
};

#[derive(Subcommand, Debug)]
pub enum DevicesCommand {
    /// Register a device; prints its token (shown this once)
    Add {
        /// Its device type (created first with `device-types add`)
        device_type: String,
        device_id: String,
        /// Its token (at least 18 characters) [default: a random one]
        #[arg(long)]
        token: Option<String>,
    },
    /// Devices of one type, or of every type
    List {
        /// Only devices of this type
        device_type: Option<String>,
    },
    /// One device
    Get {
        device_type: String,
        device_id: String,
    },
    /// Delete a device (its connection is ended: credentials revoked)
    Rm {
        device_type: String,
        device_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceTypesCommand {
    /// Create a device type
    Add {
        id: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Device, or Gateway for types whose devices may act for others
        #[arg(long, value_enum, default_value = "device")]
        class: ClassArg,
    },
    /// Every device type
    List,
    /// One device type
    Get { id: String },
    /// Delete a device type
    Rm { id: String },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ClassArg {
    Device,
    Gateway,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key; prints its token (shown this once)
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Every API key (without tokens)
    List,
    /// Delete an API key (applications connected with it are disconnected)
    Rm { key: String },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RoleArg {
    ReadOnly,
    Operator,
    Admin,
}

const TYPES: &str = "/api/v0002/device/types";

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("-").to_owned()
}

fn results(v: &Value) -> Vec<Value> {
    v["results"].as_array().cloned().unwrap_or_default()
}

fn device_table(devices: &[Value]) {
    let mut table = Table::new(vec![
        "CLIENT ID",
        "TYPE",
        "DEVICE ID",
        "CLASS",
        "REGISTERED",
    ]);
    for d in devices {
        table.push(vec![
            text(d, "clientId"),
            text(d, "typeId"),
            text(d, "deviceId"),
            text(d, "classId"),
            d["registration"]["date"].as_str().unwrap_or("-").to_owned(),
        ]);
    }
    table.print();
}

fn type_table(types: &[Value]) {
    let mut table = Table::new(vec!["TYPE", "CLASS", "CREATED", "DESCRIPTION"]);
    for t in types {
        table.push(vec![
            text(t, "id"),
            text(t, "classId"),
            text(t, "createdDateTime"),
            t["description"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
}

fn key_table(keys: &[Value]) {
    let mut table = Table::new(vec!["KEY", "ROLE", "CREATED", "DESCRIPTION"]);
    for k in keys {
        table.push(vec![
            text(k, "key"),
            text(k, "role"),
            text(k, "created"),
            k["description"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
}

pub async fn devices(
    endpoints: &Endpoints,
    options: &Options,
    command: DevicesCommand,
) -> Result<()> {
    let rest = endpoints.rest()?;
    let device_path = |t: &str, d: &str| format!("{TYPES}/{}/devices/{}", segment(t), segment(d));
    match command {
        DevicesCommand::Add {
            device_type,
            device_id,
            token,
        } => {
            let mut body = json!({ "deviceId": device_id });
            if let Some(token) = token {
                body["authToken"] = token.into();
            }
            let path = format!("{TYPES}/{}/devices", segment(&device_type));
            let created = rest.post(&path, body).await?;
            if options.json {
                output::print_json(&created);
            } else {
                output::print_fields(&[
                    ("client id", text(&created, "clientId")),
                    ("token", text(&created, "authToken")),
                ]);
                eprintln!(
                    "The token is shown this once: the device connects with user name use-token-auth and this token as its password."
                );
            }
        }
        DevicesCommand::List { device_type } => {
            let types = match device_type {
                Some(t) => vec![t],
                None => results(&rest.get(TYPES).await?)
                    .iter()
                    .map(|t| text(t, "id"))
                    .collect(),
            };
            let mut devices = Vec::new();
            for t in types {
                let path = format!("{TYPES}/{}/devices", segment(&t));
                devices.extend(results(&rest.get(&path).await?));
            }
            if options.json {
                output::print_json(&json!({ "results": devices }));
            } else {
                device_table(&devices);
            }
        }
        DevicesCommand::Get {
            device_type,
            device_id,
        } => {
            let device = rest.get(&device_path(&device_type, &device_id)).await?;
            if options.json {
                output::print_json(&device);
            } else {
                device_table(&[device]);
            }
        }
        DevicesCommand::Rm {
            device_type,
            device_id,
        } => {
            rest.delete(&device_path(&device_type, &device_id)).await?;
            if options.json {
                output::print_json(
                    &json!({"typeId": device_type, "deviceId": device_id, "deleted": true}),
                );
            } else {
                println!("deleted device {device_type}/{device_id}");
            }
        }
    }
    Ok(())
}

pub async fn device_types(
    endpoints: &Endpoints,
    options: &Options,
    command: DeviceTypesCommand,
) -> Result<()> {
    let rest = endpoints.rest()?;
    match command {
        DeviceTypesCommand::Add {
            id,
            description,
            class,
        } => {
            let class = match class {
                ClassArg::Device => "Device",
                ClassArg::Gateway => "Gateway",
            };
            let created = rest
                .post(
                    TYPES,
                    json!({"id": id, "description": description, "classId": class}),
                )
                .await?;
            if options.json {
                output::print_json(&created);
            } else {
                type_table(&[created]);
            }
        }
        DeviceTypesCommand::List => {
            let list = rest.get(TYPES).await?;
            if options.json {
                output::print_json(&list);
            } else {
                type_table(&results(&list));
            }
        }
        DeviceTypesCommand::Get { id } => {
            let t = rest.get(&format!("{TYPES}/{}", segment(&id))).await?;
            if options.json {
                output::print_json(&t);
            } else {
                type_table(&[t]);
            }
        }
        DeviceTypesCommand::Rm { id } => {
            rest.delete(&format!("{TYPES}/{}", segment(&id))).await?;
            if options.json {
                output::print_json(&json!({"id": id, "deleted": true}));
            } else {
                println!("deleted device type {id}");
            }
        }
    }
    Ok(())
}

pub async fn keys(endpoints: &Endpoints, options: &Options, command: KeysCommand) -> Result<()> {
    const KEYS: &str = "/api/v0002/apikeys";
    let rest = endpoints.rest()?;
    match command {
        KeysCommand::Create { role, description } => {
            let role = match role {
                RoleArg::ReadOnly => "read-only",
                RoleArg::Operator => "operator",
                RoleArg::Admin => "admin",
            };
            let created = rest
                .post(KEYS, json!({"role": role, "description": description}))
                .await?;
            if options.json {
                output::print_json(&created);
            } else {
                output::print_fields(&[
                    ("key", text(&created, "key")),
                    ("token", text(&created, "token")),
                    ("role", text(&created, "role")),
                ]);
                eprintln!("The token is shown this once.");
            }
        }
        KeysCommand::List => {
            let list = rest.get(KEYS).await?;
            if options.json {
                output::print_json(&list);
            } else {
                key_table(&results(&list));
            }
        }
        KeysCommand::Rm { key } => {
            rest.delete(&format!("{KEYS}/{}", segment(&key))).await?;
            if options.json {
                output::print_json(&json!({"key": key, "deleted": true}));
            } else {
                println!("deleted API key {key}");
            }
        }
    }
    Ok(())
}
