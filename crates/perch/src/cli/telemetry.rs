//! `perch telemetry …`: the sink's subscriptions and queries of the telemetry store
//! (docs/telemetry.md).

use anyhow::Result;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::ClientArgs;
use super::client::AdminClient;
use super::output::{cell, print_list};

/// Subscriptions with this id prefix feed the sink (perch-sink's `SINK_SUBSCRIPTION_PREFIX`).
const SINK_PREFIX: &str = "perch-sink-";

/// `perch telemetry …`
#[derive(Debug, Args)]
pub struct TelemetryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TelemetryCommand,
}

#[derive(Debug, Subcommand)]
pub enum TelemetryCommand {
    /// Which topics the sink keeps
    #[command(subcommand)]
    Sink(SinkCommand),
    /// Stored telemetry, oldest first (the newest --limit points of the range)
    Query(Filters),
    /// Readings the anomaly models flagged, oldest first (the newest --limit of the range)
    Anomalies(Filters),
}

/// The filters `query` and `anomalies` share.
#[derive(Debug, Args)]
pub struct Filters {
    /// Only this device (its string id)
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    registry: Option<String>,
    #[arg(long)]
    subfolder: Option<String>,
    /// RFC 3339 time, inclusive
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339 time, exclusive
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

impl Filters {
    fn query(self) -> Vec<(&'static str, String)> {
        let mut query = vec![("pageSize", self.limit.to_string())];
        query.extend(self.device.map(|v| ("deviceId", v)));
        query.extend(self.registry.map(|v| ("registryId", v)));
        query.extend(self.subfolder.map(|v| ("subFolder", v)));
        query.extend(self.since.map(|v| ("since", v)));
        query.extend(self.until.map(|v| ("until", v)));
        query
    }
}

#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Keep every message of TOPIC from now on (makes subscription perch-sink-TOPIC)
    Create { topic: String },
    /// The topics the sink keeps
    List,
    /// Stop keeping TOPIC (deletes its sink subscription; stored telemetry stays)
    Delete { topic: String },
}

fn subscription(project: &str, topic: &str) -> String {
    format!("projects/{project}/subscriptions/{SINK_PREFIX}{topic}")
}

pub async fn run(args: TelemetryArgs) -> Result<()> {
    let c = &args.client;
    let client = AdminClient::new(c)?;
    let p = &c.project;
    match args.command {
        TelemetryCommand::Sink(SinkCommand::Create { topic }) => {
            let body = json!({ "topic": format!("projects/{p}/topics/{topic}"), "ackDeadlineSeconds": 60 });
            client
                .call(Method::PUT, &subscription(p, &topic), &[], Some(&body))
                .await?;
            eprintln!(
                "The sink keeps topic [{topic}] from now on (subscription {SINK_PREFIX}{topic})."
            );
        }
        TelemetryCommand::Sink(SinkCommand::Delete { topic }) => {
            client
                .call(Method::DELETE, &subscription(p, &topic), &[], None)
                .await?;
            eprintln!("The sink no longer keeps topic [{topic}]; what it stored stays.");
        }
        TelemetryCommand::Sink(SinkCommand::List) => {
            let topics = sink_topics(&client, p).await?;
            print_list(c.format, &topics, &["TOPIC", "SUBSCRIPTION"], |t| {
                vec![cell(&t["topic"]), cell(&t["subscription"])]
            })?
        }
        TelemetryCommand::Query(filters) => {
            let query = filters.query();
            let r = client
                .call(
                    Method::GET,
                    &format!("projects/{p}/telemetry"),
                    &query,
                    None,
                )
                .await?;
            let points = r["points"].as_array().cloned().unwrap_or_default();
            print_list(
                c.format,
                &points,
                &["PUBLISH_TIME", "DEVICE_ID", "SUBFOLDER", "DATA"],
                |pt| {
                    let data = match &pt["json"] {
                        Value::Null => cell(&pt["data"]),
                        v => v.to_string(),
                    };
                    vec![
                        cell(&pt["publishTime"]),
                        cell(&pt["deviceId"]),
                        cell(&pt["subFolder"]),
                        data,
                    ]
                },
            )?
        }
        TelemetryCommand::Anomalies(filters) => anomalies(c, &client, filters).await?,
    }
    Ok(())
}

/// The sink's subscriptions (those named `perch-sink-…`) and their topics, over every page.
async fn sink_topics(client: &AdminClient, p: &str) -> Result<Vec<Value>> {
    let mut topics = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .call(
                Method::GET,
                &format!("projects/{p}/subscriptions"),
                &[("pageToken", token.clone())],
                None,
            )
            .await?;
        for s in page["subscriptions"].as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or_default();
            if name
                .rsplit('/')
                .next()
                .is_some_and(|id| id.starts_with(SINK_PREFIX))
            {
                topics.push(json!({ "subscription": name, "topic": s["topic"] }));
            }
        }
        token = page["nextPageToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if token.is_empty() {
            return Ok(topics);
        }
    }
}

/// `telemetry anomalies`.
async fn anomalies(c: &ClientArgs, client: &AdminClient, filters: Filters) -> Result<()> {
    let r = client
        .call(
            Method::GET,
            &format!("projects/{}/anomalies", c.project),
            &filters.query(),
            None,
        )
        .await?;
    let found = r["anomalies"].as_array().cloned().unwrap_or_default();
    print_list(
        c.format,
        &found,
        &[
            "PUBLISH_TIME",
            "DEVICE_ID",
            "FIELD",
            "VALUE",
            "EXPECTED",
            "Z",
        ],
        |a| {
            let num = |k: &str| a[k].as_f64().unwrap_or_default();
            vec![
                cell(&a["publishTime"]),
                cell(&a["deviceId"]),
                cell(&a["field"]),
                cell(&a["value"]),
                format!("{:.2} ± {:.2}", num("mean"), num("std")),
                format!("{:+.1}", num("z")),
            ]
        },
    )
}
