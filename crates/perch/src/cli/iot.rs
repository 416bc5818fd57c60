//! `perch iot registries|devices …`, shaped like `gcloud iot`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::AdminClient;
use super::output::{cell, describe, print_list, table};
use super::{ClientArgs, Format};

/// `perch iot …`
#[derive(Debug, Args)]
pub struct IotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: IotCommand,
}

#[derive(Debug, Subcommand)]
pub enum IotCommand {
    /// Manage device registries
    #[command(subcommand)]
    Registries(RegistriesCommand),
    /// Manage devices
    #[command(subcommand)]
    Devices(DevicesCommand),
}

#[derive(Debug, Args)]
pub struct RegistrySettings {
    /// Route telemetry to a topic: topic=T[,subfolder=S] (first match wins; no subfolder = default)
    #[arg(long = "event-notification-config")]
    event_notification_configs: Vec<String>,
    /// Topic that receives device state reports
    #[arg(long)]
    state_pubsub_topic: Option<String>,
    /// Accept MQTT connections
    #[arg(long, overrides_with = "no_enable_mqtt_config")]
    enable_mqtt_config: bool,
    /// Refuse MQTT connections
    #[arg(long)]
    no_enable_mqtt_config: bool,
    /// Accept HTTP bridge requests
    #[arg(long, overrides_with = "no_enable_http_config")]
    enable_http_config: bool,
    /// Refuse HTTP bridge requests
    #[arg(long)]
    no_enable_http_config: bool,
    /// A CA certificate (PEM) that device certificates must be signed by; repeatable
    #[arg(long = "public-key-path")]
    ca_certificates: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RegistriesCommand {
    /// Create a registry
    Create {
        registry: String,
        #[arg(long)]
        region: String,
        #[command(flatten)]
        settings: RegistrySettings,
    },
    /// Show a registry
    Describe {
        registry: String,
        #[arg(long)]
        region: String,
    },
    /// List the registries of a region
    List {
        #[arg(long)]
        region: String,
        /// Stop after this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Change a registry's settings
    Update {
        registry: String,
        #[arg(long)]
        region: String,
        #[command(flatten)]
        settings: RegistrySettings,
    },
    /// Delete an empty registry
    Delete {
        registry: String,
        #[arg(long)]
        region: String,
    },
}

/// `--registry REG --region R`
#[derive(Debug, Args, Clone)]
pub struct RegistryRef {
    #[arg(long)]
    registry: String,
    #[arg(long)]
    region: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceType {
    Gateway,
    NonGateway,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuthMethod {
    AssociationOnly,
    DeviceAuthTokenOnly,
    AssociationAndDeviceAuthToken,
}

impl AuthMethod {
    fn proto_name(self) -> &'static str {
        match self {
            AuthMethod::AssociationOnly => "ASSOCIATION_ONLY",
            AuthMethod::DeviceAuthTokenOnly => "DEVICE_AUTH_TOKEN_ONLY",
            AuthMethod::AssociationAndDeviceAuthToken => "ASSOCIATION_AND_DEVICE_AUTH_TOKEN",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Create a device
    Create {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        /// path=F,type=es256|rs256|es256-x509|rsa-x509[,expiration-time=T]; repeatable (at most 3)
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// Refuse the device's connections
        #[arg(long)]
        blocked: bool,
        /// Metadata key=value; repeatable
        #[arg(long = "metadata")]
        metadata: Vec<String>,
        #[arg(long, value_enum)]
        device_type: Option<DeviceType>,
        /// How devices behind this gateway authenticate
        #[arg(long, value_enum)]
        auth_method: Option<AuthMethod>,
    },
    /// Show a device
    Describe {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// List the devices of a registry
    List {
        #[command(flatten)]
        registry: RegistryRef,
        /// Only these device ids (comma-separated)
        #[arg(long, value_delimiter = ',')]
        device_ids: Vec<String>,
        /// Stop after this many
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Change a device's blocked state or metadata
    Update {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        /// Refuse the device's connections
        #[arg(long, overrides_with = "no_blocked")]
        blocked: bool,
        /// Accept the device's connections again
        #[arg(long)]
        no_blocked: bool,
        /// Replace the metadata with these key=value pairs
        #[arg(long = "metadata")]
        metadata: Vec<String>,
    },
    /// Delete a device
    Delete {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Device configs (cloud → device)
    #[command(subcommand)]
    Configs(ConfigsCommand),
    /// Device state reports
    #[command(subcommand)]
    States(StatesCommand),
    /// Commands to connected devices
    #[command(subcommand)]
    Commands(CommandsCommand),
    /// A device's public keys
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Make a key pair for a device: P-256 (ES256), like `openssl ecparam -name prime256v1 -genkey`
    Keygen {
        /// Directory for ec_private.pem (mode 0600) and ec_public.pem
        #[arg(long)]
        out: PathBuf,
        /// RSA instead of P-256 (not built in yet; the error shows the openssl commands)
        #[arg(long)]
        rsa: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigsCommand {
    /// Set a new config version
    Update {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        /// File whose bytes become the config
        #[arg(long, conflicts_with = "config_data")]
        config_file: Option<PathBuf>,
        /// Text that becomes the config
        #[arg(long)]
        config_data: Option<String>,
        /// Only if the current version is this one (0 = unconditional)
        #[arg(long, default_value_t = 0)]
        version_to_update: i64,
    },
    /// List config versions, newest first
    List {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StatesCommand {
    /// List state reports, newest first
    List {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// Send a command to a connected device
    Send {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        command_data: String,
        #[arg(long)]
        subfolder: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Add a public key
    Create {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        path: PathBuf,
        #[arg(long, value_parser = ["es256", "rs256", "es256-x509", "rsa-x509"])]
        r#type: String,
        /// RFC 3339 time after which the key no longer authenticates
        #[arg(long)]
        expiration_time: Option<String>,
    },
    /// List public keys
    List {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
    },
    /// Remove the public key at an index (as `credentials list` shows)
    Delete {
        device: String,
        #[command(flatten)]
        registry: RegistryRef,
        #[arg(long)]
        index: usize,
    },
}

fn location_path(project: &str, region: &str) -> String {
    format!("projects/{project}/locations/{region}")
}

fn registry_path(project: &str, r: &RegistryRef) -> String {
    format!(
        "{}/registries/{}",
        location_path(project, &r.region),
        r.registry
    )
}

fn device_path(project: &str, r: &RegistryRef, device: &str) -> String {
    format!("{}/devices/{device}", registry_path(project, r))
}

/// A short topic id becomes `projects/{project}/topics/{id}`, as gcloud does.
fn topic_name(project: &str, topic: &str) -> String {
    if topic.starts_with("projects/") {
        topic.to_owned()
    } else {
        format!("projects/{project}/topics/{topic}")
    }
}

/// Parses `k=v,k=v` flag values.
fn parse_pairs(flag: &str, value: &str) -> Result<Vec<(String, String)>> {
    value
        .split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| {
                    format!("--{flag} takes key=value pairs separated by commas, got '{value}'")
                })
        })
        .collect()
}

fn read_file(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

fn public_key_credential(spec: &str) -> Result<Value> {
    let mut path = None;
    let mut kind = None;
    let mut expiration = None;
    for (k, v) in parse_pairs("public-key", spec)? {
        match k.as_str() {
            "path" => path = Some(v),
            "type" => kind = Some(v),
            "expiration-time" => expiration = Some(v),
            other => {
                bail!("--public-key has no key '{other}'; use path=F,type=T[,expiration-time=T]")
            }
        }
    }
    let path = path.context("--public-key needs path=FILE")?;
    let kind = kind.context("--public-key needs type=es256|rs256|es256-x509|rsa-x509")?;
    credential(Path::new(&path), &kind, expiration.as_deref())
}

fn credential(path: &Path, kind: &str, expiration: Option<&str>) -> Result<Value> {
    let format = match kind {
        "es256" => "ES256_PEM",
        "rs256" => "RSA_PEM",
        "es256-x509" => "ES256_X509_PEM",
        "rsa-x509" => "RSA_X509_PEM",
        other => bail!("unknown key type '{other}'; use es256, rs256, es256-x509 or rsa-x509"),
    };
    let key = read_file(path, "public key")?;
    let mut credential = json!({ "publicKey": { "format": format, "key": key } });
    if let Some(t) = expiration {
        credential["expirationTime"] = t.into();
    }
    Ok(credential)
}

fn metadata_map(pairs: &[String]) -> Result<Value> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        for (k, v) in parse_pairs("metadata", pair)? {
            map.insert(k, v.into());
        }
    }
    Ok(Value::Object(map))
}

/// The registry body and update mask the settings flags describe.
fn registry_body(project: &str, s: &RegistrySettings) -> Result<(Value, Vec<&'static str>)> {
    let mut body = json!({});
    let mut mask = Vec::new();
    if !s.event_notification_configs.is_empty() {
        let mut configs = Vec::new();
        for spec in &s.event_notification_configs {
            let mut topic = None;
            let mut subfolder = None;
            for (k, v) in parse_pairs("event-notification-config", spec)? {
                match k.as_str() {
                    "topic" => topic = Some(v),
                    "subfolder" => subfolder = Some(v),
                    other => bail!(
                        "--event-notification-config has no key '{other}'; use topic=T[,subfolder=S]"
                    ),
                }
            }
            let topic = topic.context("--event-notification-config needs topic=T")?;
            let mut config = json!({ "pubsubTopicName": topic_name(project, &topic) });
            if let Some(s) = subfolder {
                config["subfolderMatches"] = s.into();
            }
            configs.push(config);
        }
        // IoT Core stores configs in the given order and the first match wins, so a catch-all
        // given before a subfolder entry would shadow it: keep the user's order.
        body["eventNotificationConfigs"] = configs.into();
        mask.push("eventNotificationConfigs");
    }
    if let Some(t) = &s.state_pubsub_topic {
        body["stateNotificationConfig"] = json!({ "pubsubTopicName": topic_name(project, t) });
        mask.push("stateNotificationConfig");
    }
    if s.enable_mqtt_config || s.no_enable_mqtt_config {
        let state = if s.no_enable_mqtt_config {
            "MQTT_DISABLED"
        } else {
            "MQTT_ENABLED"
        };
        body["mqttConfig"] = json!({ "mqttEnabledState": state });
        mask.push("mqttConfig");
    }
    if s.enable_http_config || s.no_enable_http_config {
        let state = if s.no_enable_http_config {
            "HTTP_DISABLED"
        } else {
            "HTTP_ENABLED"
        };
        body["httpConfig"] = json!({ "httpEnabledState": state });
        mask.push("httpConfig");
    }
    if !s.ca_certificates.is_empty() {
        let certs: Result<Vec<Value>> = s
            .ca_certificates
            .iter()
            .map(|p| Ok(json!({ "publicKeyCertificate": { "format": "X509_CERTIFICATE_PEM", "certificate": read_file(p, "CA certificate")? } })))
            .collect();
        body["credentials"] = certs?.into();
        mask.push("credentials");
    }
    Ok((body, mask))
}

fn print_one(format: Format, value: &Value) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Table => describe(value),
    }
}

fn enabled(value: &Value, state: &str) -> String {
    if value.as_str().is_some_and(|s| s.ends_with("_DISABLED")) {
        "false".into()
    } else {
        let _ = state;
        "true".into()
    }
}

/// Follows page tokens until `limit` items (or the end), collecting `field` from each page.
async fn list_all(
    client: &AdminClient,
    path: &str,
    field: &str,
    mut query: Vec<(&str, String)>,
    limit: Option<usize>,
) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let mut q = query.clone();
        if !token.is_empty() {
            q.push(("pageToken", token.clone()));
        }
        let page = client.call(Method::GET, path, &q, None).await?;
        if let Some(list) = page[field].as_array() {
            items.extend(list.iter().cloned());
        }
        if limit.is_some_and(|l| items.len() >= l) {
            items.truncate(limit.unwrap_or(usize::MAX));
            break;
        }
        token = page["nextPageToken"].as_str().unwrap_or("").to_owned();
        if token.is_empty() {
            break;
        }
        query.retain(|(k, _)| *k != "pageToken");
    }
    Ok(items)
}

pub async fn run(args: IotArgs) -> Result<()> {
    let c = &args.client;
    match args.command {
        IotCommand::Registries(cmd) => registries(c, cmd).await,
        IotCommand::Devices(DevicesCommand::Keygen { out, rsa }) => keygen(&out, rsa),
        IotCommand::Devices(cmd) => devices(c, cmd).await,
    }
}

async fn registries(c: &ClientArgs, cmd: RegistriesCommand) -> Result<()> {
    let client = AdminClient::new(c)?;
    match cmd {
        RegistriesCommand::Create {
            registry,
            region,
            settings,
        } => {
            let (mut body, _) = registry_body(&c.project, &settings)?;
            body["id"] = registry.into();
            let created = client
                .call(
                    Method::POST,
                    &format!("{}/registries", location_path(&c.project, &region)),
                    &[],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &created);
        }
        RegistriesCommand::Describe { registry, region } => {
            let r = client
                .call(
                    Method::GET,
                    &format!(
                        "{}/registries/{registry}",
                        location_path(&c.project, &region)
                    ),
                    &[],
                    None,
                )
                .await?;
            print_one(c.format, &r);
        }
        RegistriesCommand::List { region, limit } => {
            let items = list_all(
                &client,
                &format!("{}/registries", location_path(&c.project, &region)),
                "deviceRegistries",
                vec![],
                limit,
            )
            .await?;
            print_list(
                c.format,
                &items,
                &["ID", "LOCATION", "MQTT_ENABLED", "HTTP_ENABLED"],
                |r| {
                    vec![
                        cell(&r["id"]),
                        region.clone(),
                        enabled(&r["mqttConfig"]["mqttEnabledState"], "MQTT"),
                        enabled(&r["httpConfig"]["httpEnabledState"], "HTTP"),
                    ]
                },
            )?
        }
        RegistriesCommand::Update {
            registry,
            region,
            settings,
        } => {
            let (body, mask) = registry_body(&c.project, &settings)?;
            if mask.is_empty() {
                bail!(
                    "nothing to update; pass --event-notification-config, --state-pubsub-topic, --[no-]enable-mqtt-config, --[no-]enable-http-config or --public-key-path"
                );
            }
            let r = client
                .call(
                    Method::PATCH,
                    &format!(
                        "{}/registries/{registry}",
                        location_path(&c.project, &region)
                    ),
                    &[("updateMask", mask.join(","))],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &r);
        }
        RegistriesCommand::Delete { registry, region } => {
            client
                .call(
                    Method::DELETE,
                    &format!(
                        "{}/registries/{registry}",
                        location_path(&c.project, &region)
                    ),
                    &[],
                    None,
                )
                .await?;
            eprintln!("Deleted registry [{registry}].");
        }
    }
    Ok(())
}

async fn devices(c: &ClientArgs, cmd: DevicesCommand) -> Result<()> {
    let client = AdminClient::new(c)?;
    let p = &c.project;
    match cmd {
        DevicesCommand::Create {
            device,
            registry,
            public_keys,
            blocked,
            metadata,
            device_type,
            auth_method,
        } => {
            let credentials: Result<Vec<Value>> = public_keys
                .iter()
                .map(|s| public_key_credential(s))
                .collect();
            let mut body = json!({ "id": device, "credentials": credentials?, "metadata": metadata_map(&metadata)? });
            if blocked {
                body["blocked"] = true.into();
            }
            let mut gateway = json!({});
            if let Some(t) = device_type {
                gateway["gatewayType"] = match t {
                    DeviceType::Gateway => "GATEWAY",
                    DeviceType::NonGateway => "NON_GATEWAY",
                }
                .into();
            }
            if let Some(m) = auth_method {
                gateway["gatewayAuthMethod"] = m.proto_name().into();
            }
            body["gatewayConfig"] = gateway;
            let created = client
                .call(
                    Method::POST,
                    &format!("{}/devices", registry_path(p, &registry)),
                    &[],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &created);
        }
        DevicesCommand::Describe { device, registry } => {
            print_one(
                c.format,
                &client
                    .call(Method::GET, &device_path(p, &registry, &device), &[], None)
                    .await?,
            );
        }
        DevicesCommand::List {
            registry,
            device_ids,
            limit,
        } => {
            let mut query: Vec<(&str, String)> =
                device_ids.into_iter().map(|id| ("deviceIds", id)).collect();
            query.push(("fieldMask", "blocked,gatewayConfig,lastEventTime".into()));
            let items = list_all(
                &client,
                &format!("{}/devices", registry_path(p, &registry)),
                "devices",
                query,
                limit,
            )
            .await?;
            print_list(
                c.format,
                &items,
                &["ID", "NUM_ID", "BLOCKED", "GATEWAY", "LAST_EVENT"],
                |d| {
                    vec![
                        cell(&d["id"]),
                        cell(&d["numId"]),
                        d["blocked"].as_bool().unwrap_or(false).to_string(),
                        (d["gatewayConfig"]["gatewayType"].as_str() == Some("GATEWAY")).to_string(),
                        cell(&d["lastEventTime"]),
                    ]
                },
            )?
        }
        DevicesCommand::Update {
            device,
            registry,
            blocked,
            no_blocked,
            metadata,
        } => {
            let mut body = json!({});
            let mut mask = Vec::new();
            if blocked || no_blocked {
                body["blocked"] = (blocked && !no_blocked).into();
                mask.push("blocked");
            }
            if !metadata.is_empty() {
                body["metadata"] = metadata_map(&metadata)?;
                mask.push("metadata");
            }
            if mask.is_empty() {
                bail!(
                    "nothing to update; pass --blocked, --no-blocked or --metadata (keys use `credentials create|delete`)"
                );
            }
            let d = client
                .call(
                    Method::PATCH,
                    &device_path(p, &registry, &device),
                    &[("updateMask", mask.join(","))],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &d);
        }
        DevicesCommand::Delete { device, registry } => {
            client
                .call(
                    Method::DELETE,
                    &device_path(p, &registry, &device),
                    &[],
                    None,
                )
                .await?;
            eprintln!("Deleted device [{device}].");
        }
        DevicesCommand::Configs(ConfigsCommand::Update {
            device,
            registry,
            config_file,
            config_data,
            version_to_update,
        }) => {
            let data = match (config_file, config_data) {
                (Some(f), None) => std::fs::read(&f)
                    .with_context(|| format!("cannot read the config file {}", f.display()))?,
                (None, Some(d)) => d.into_bytes(),
                _ => bail!("pass exactly one of --config-file or --config-data"),
            };
            let body = json!({ "versionToUpdate": version_to_update.to_string(), "binaryData": STANDARD.encode(data) });
            let config = client
                .call(
                    Method::POST,
                    &format!(
                        "{}:modifyCloudToDeviceConfig",
                        device_path(p, &registry, &device)
                    ),
                    &[],
                    Some(&body),
                )
                .await?;
            print_one(c.format, &config);
        }
        DevicesCommand::Configs(ConfigsCommand::List {
            device,
            registry,
            limit,
        }) => {
            let query = vec![("numVersions", limit.unwrap_or(0).to_string())];
            let r = client
                .call(
                    Method::GET,
                    &format!("{}/configVersions", device_path(p, &registry, &device)),
                    &query,
                    None,
                )
                .await?;
            let configs = r["deviceConfigs"].as_array().cloned().unwrap_or_default();
            print_list(
                c.format,
                &configs,
                &["VERSION", "CLOUD_UPDATE_TIME", "DEVICE_ACK_TIME", "DATA"],
                |cfg| {
                    vec![
                        cell(&cfg["version"]),
                        cell(&cfg["cloudUpdateTime"]),
                        cell(&cfg["deviceAckTime"]),
                        printable(&cfg["binaryData"]),
                    ]
                },
            )?
        }
        DevicesCommand::States(StatesCommand::List {
            device,
            registry,
            limit,
        }) => {
            let query = vec![("numStates", limit.unwrap_or(0).to_string())];
            let r = client
                .call(
                    Method::GET,
                    &format!("{}/states", device_path(p, &registry, &device)),
                    &query,
                    None,
                )
                .await?;
            let states = r["deviceStates"].as_array().cloned().unwrap_or_default();
            print_list(c.format, &states, &["UPDATE_TIME", "DATA"], |s| {
                vec![cell(&s["updateTime"]), printable(&s["binaryData"])]
            })?
        }
        DevicesCommand::Commands(CommandsCommand::Send {
            device,
            registry,
            command_data,
            subfolder,
        }) => {
            let mut body = json!({ "binaryData": STANDARD.encode(command_data) });
            if let Some(s) = subfolder {
                body["subfolder"] = s.into();
            }
            client
                .call(
                    Method::POST,
                    &format!("{}:sendCommandToDevice", device_path(p, &registry, &device)),
                    &[],
                    Some(&body),
                )
                .await?;
            eprintln!("Command sent to [{device}].");
        }
        DevicesCommand::Credentials(cmd) => credentials(c, &client, cmd).await?,
        DevicesCommand::Keygen { .. } => unreachable!("keygen runs without a server"),
    }
    Ok(())
}

/// Base64 data shown as text when it is UTF-8, else as base64.
fn printable(value: &Value) -> String {
    let b64 = value.as_str().unwrap_or("");
    match STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(text) if !text.chars().any(char::is_control) => text,
        _ => b64.to_owned(),
    }
}

async fn credentials(c: &ClientArgs, client: &AdminClient, cmd: CredentialsCommand) -> Result<()> {
    let p = &c.project;
    let (device, registry) = match &cmd {
        CredentialsCommand::Create {
            device, registry, ..
        }
        | CredentialsCommand::List { device, registry }
        | CredentialsCommand::Delete {
            device, registry, ..
        } => (device.clone(), registry.clone()),
    };
    let path = device_path(p, &registry, &device);
    let current = client
        .call(
            Method::GET,
            &path,
            &[("fieldMask", "credentials".into())],
            None,
        )
        .await?;
    let mut creds = current["credentials"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let replace = |creds: Vec<Value>| {
        let body = json!({ "credentials": creds });
        let path = path.clone();
        async move {
            client
                .call(
                    Method::PATCH,
                    &path,
                    &[("updateMask", "credentials".into())],
                    Some(&body),
                )
                .await
        }
    };
    match cmd {
        CredentialsCommand::Create {
            path: key_path,
            r#type,
            expiration_time,
            ..
        } => {
            creds.push(credential(&key_path, &r#type, expiration_time.as_deref())?);
            replace(creds).await?;
            eprintln!("Added a {type} credential to [{device}].", type = r#type);
        }
        CredentialsCommand::List { .. } => match c.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&creds)?),
            Format::Table => table(
                &["INDEX", "FORMAT", "EXPIRATION_TIME"],
                &creds
                    .iter()
                    .enumerate()
                    .map(|(i, cr)| {
                        vec![
                            i.to_string(),
                            cell(&cr["publicKey"]["format"]),
                            cell(&cr["expirationTime"]),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ),
        },
        CredentialsCommand::Delete { index, .. } => {
            if index >= creds.len() {
                bail!(
                    "device `{device}` has {} credentials; index {index} does not exist (see `credentials list`)",
                    creds.len()
                );
            }
            creds.remove(index);
            replace(creds).await?;
            eprintln!("Deleted credential {index} of [{device}].");
        }
    }
    Ok(())
}

/// Writes a P-256 key pair as PEM: the private key PKCS#8 with mode 0600.
fn keygen(out: &Path, rsa: bool) -> Result<()> {
    if rsa {
        bail!(
            "RSA key generation is not built in yet; run `openssl genpkey -algorithm RSA -out {dir}/rsa_private.pem -pkeyopt rsa_keygen_bits:2048 && openssl rsa -in {dir}/rsa_private.pem -pubout -out {dir}/rsa_public.pem`",
            dir = out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let private = out.join("ec_private.pem");
    let public = out.join("ec_public.pem");
    if private.exists() {
        bail!(
            "{} exists; refusing to overwrite a private key",
            private.display()
        );
    }
    crate::datadir::write_private(&private, key.serialize_pem().as_bytes())?;
    std::fs::write(&public, key.public_key_pem())
        .with_context(|| format!("cannot write {}", public.display()))?;
    println!("{}", private.display());
    println!("{}", public.display());
    Ok(())
}
