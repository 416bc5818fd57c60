//! `perch pubsub topics|subscriptions …`, shaped like `gcloud pubsub`.

use anyhow::{Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::client::AdminClient;
use crate::cli::names::{subscription_name, topic_name};
use crate::cli::output::{cell, print_list, print_one};
use crate::cli::{ClientArgs, Format};

/// `perch pubsub …`
#[derive(Debug, Args)]
pub struct PubsubArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: PubsubCommand,
}

#[derive(Debug, Subcommand)]
pub enum PubsubCommand {
    /// Manage topics
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Manage subscriptions and pull messages
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic
    Create { topic: String },
    /// Show a topic
    Describe { topic: String },
    /// List topics
    List,
    /// Delete a topic (its subscriptions stay, detached from it)
    Delete { topic: String },
    /// Publish one message
    Publish {
        topic: String,
        #[arg(long)]
        message: String,
        /// key=value; repeatable
        #[arg(long = "attribute")]
        attributes: Vec<String>,
        #[arg(long)]
        ordering_key: Option<String>,
    },
}

/// `subscriptions create` flags beyond the subscription and its topic.
#[derive(Debug, Args)]
pub struct SubscriptionSettings {
    /// Seconds a subscriber has to ack (10–600)
    #[arg(long)]
    ack_deadline: Option<i32>,
    #[arg(long, requires = "max_delivery_attempts")]
    dead_letter_topic: Option<String>,
    #[arg(long, requires = "dead_letter_topic")]
    max_delivery_attempts: Option<i32>,
    /// Push each message to this URL instead of waiting for pulls
    #[arg(long)]
    push_endpoint: Option<String>,
    /// e.g. 'attributes.subFolder = "temperature"'
    #[arg(long)]
    filter: Option<String>,
    #[arg(long)]
    enable_message_ordering: bool,
    /// Keep acked messages for seek
    #[arg(long)]
    retain_acked_messages: bool,
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// Create a subscription
    Create {
        subscription: String,
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        settings: SubscriptionSettings,
    },
    /// Show a subscription
    Describe { subscription: String },
    /// List subscriptions
    List,
    /// Delete a subscription
    Delete { subscription: String },
    /// Pull messages
    Pull {
        subscription: String,
        /// Acknowledge what was pulled
        #[arg(long)]
        auto_ack: bool,
        /// Most messages to pull
        #[arg(long, default_value_t = 1)]
        limit: u32,
        /// Wait for messages instead of returning at once when there are none
        #[arg(long)]
        wait: bool,
    },
}

pub async fn run(args: PubsubArgs) -> Result<()> {
    let c = &args.client;
    let client = AdminClient::new(c)?;
    match args.command {
        PubsubCommand::Topics(cmd) => topics(c, &client, cmd).await,
        PubsubCommand::Subscriptions(cmd) => subscriptions(c, &client, cmd).await,
    }
}

async fn topics(c: &ClientArgs, client: &AdminClient, cmd: TopicsCommand) -> Result<()> {
    let p = &c.project;
    match cmd {
        TopicsCommand::Create { topic } => {
            print_one(
                c.format,
                &client
                    .call(Method::PUT, &topic_name(p, &topic), &[], Some(&json!({})))
                    .await?,
            );
        }
        TopicsCommand::Describe { topic } => {
            print_one(
                c.format,
                &client
                    .call(Method::GET, &topic_name(p, &topic), &[], None)
                    .await?,
            );
        }
        TopicsCommand::List => {
            let r = client
                .call(
                    Method::GET,
                    &format!("projects/{p}/topics"),
                    &[("pageSize", "1000".into())],
                    None,
                )
                .await?;
            let topics = r["topics"].as_array().cloned().unwrap_or_default();
            print_list(c.format, &topics, &["NAME"], |t| vec![cell(&t["name"])])?
        }
        TopicsCommand::Delete { topic } => {
            client
                .call(Method::DELETE, &topic_name(p, &topic), &[], None)
                .await?;
            eprintln!("Deleted topic [{}].", topic_name(p, &topic));
        }
        TopicsCommand::Publish {
            topic,
            message,
            attributes,
            ordering_key,
        } => {
            let m = message_body(message, &attributes, ordering_key)?;
            let r = client
                .call(
                    Method::POST,
                    &format!("{}:publish", topic_name(p, &topic)),
                    &[],
                    Some(&json!({ "messages": [m] })),
                )
                .await?;
            match c.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Format::Table => println!("messageIds: {}", cell(&r["messageIds"][0])),
            }
        }
    }
    Ok(())
}

/// The `PubsubMessage` that `topics publish` sends.
fn message_body(
    message: String,
    attributes: &[String],
    ordering_key: Option<String>,
) -> Result<Value> {
    let mut attrs = serde_json::Map::new();
    for a in attributes {
        let Some((k, v)) = a.split_once('=') else {
            bail!("--attribute takes key=value, got '{a}'")
        };
        attrs.insert(k.to_owned(), v.into());
    }
    let mut m = json!({ "data": STANDARD.encode(message), "attributes": attrs });
    if let Some(k) = ordering_key {
        m["orderingKey"] = k.into();
    }
    Ok(m)
}

async fn subscriptions(
    c: &ClientArgs,
    client: &AdminClient,
    cmd: SubscriptionsCommand,
) -> Result<()> {
    let p = &c.project;
    match cmd {
        SubscriptionsCommand::Create {
            subscription,
            topic,
            settings,
        } => {
            let body = subscription_body(p, &topic, settings);
            print_one(
                c.format,
                &client
                    .call(
                        Method::PUT,
                        &subscription_name(p, &subscription),
                        &[],
                        Some(&body),
                    )
                    .await?,
            );
        }
        SubscriptionsCommand::Describe { subscription } => {
            print_one(
                c.format,
                &client
                    .call(Method::GET, &subscription_name(p, &subscription), &[], None)
                    .await?,
            );
        }
        SubscriptionsCommand::List => {
            let r = client
                .call(
                    Method::GET,
                    &format!("projects/{p}/subscriptions"),
                    &[("pageSize", "1000".into())],
                    None,
                )
                .await?;
            let subs = r["subscriptions"].as_array().cloned().unwrap_or_default();
            print_list(
                c.format,
                &subs,
                &["NAME", "TOPIC", "ACK_DEADLINE", "FILTER"],
                |s| {
                    vec![
                        cell(&s["name"]),
                        cell(&s["topic"]),
                        cell(&s["ackDeadlineSeconds"]),
                        cell(&s["filter"]),
                    ]
                },
            )?
        }
        SubscriptionsCommand::Delete { subscription } => {
            client
                .call(
                    Method::DELETE,
                    &subscription_name(p, &subscription),
                    &[],
                    None,
                )
                .await?;
            eprintln!(
                "Deleted subscription [{}].",
                subscription_name(p, &subscription)
            );
        }
        SubscriptionsCommand::Pull {
            subscription,
            auto_ack,
            limit,
            wait,
        } => pull(c, client, &subscription, auto_ack, limit, wait).await?,
    }
    Ok(())
}

/// The `Subscription` body of `subscriptions create`.
fn subscription_body(project: &str, topic: &str, settings: SubscriptionSettings) -> Value {
    let SubscriptionSettings {
        ack_deadline,
        dead_letter_topic,
        max_delivery_attempts,
        push_endpoint,
        filter,
        enable_message_ordering,
        retain_acked_messages,
    } = settings;
    let mut body = json!({ "topic": topic_name(project, topic) });
    if let Some(d) = ack_deadline {
        body["ackDeadlineSeconds"] = d.into();
    }
    if let (Some(t), Some(n)) = (dead_letter_topic, max_delivery_attempts) {
        body["deadLetterPolicy"] =
            json!({ "deadLetterTopic": topic_name(project, &t), "maxDeliveryAttempts": n });
    }
    if let Some(url) = push_endpoint {
        body["pushConfig"] = json!({ "pushEndpoint": url });
    }
    if let Some(f) = filter {
        body["filter"] = f.into();
    }
    if enable_message_ordering {
        body["enableMessageOrdering"] = true.into();
    }
    if retain_acked_messages {
        body["retainAckedMessages"] = true.into();
    }
    body
}

/// `subscriptions pull`: up to `limit` messages, acked at once with `--auto-ack`.
async fn pull(
    c: &ClientArgs,
    client: &AdminClient,
    subscription: &str,
    auto_ack: bool,
    limit: u32,
    wait: bool,
) -> Result<()> {
    let name = subscription_name(&c.project, subscription);
    let body = json!({ "maxMessages": limit, "returnImmediately": !wait });
    let r = client
        .call(Method::POST, &format!("{name}:pull"), &[], Some(&body))
        .await?;
    let received = r["receivedMessages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if auto_ack && !received.is_empty() {
        let ids: Vec<Value> = received.iter().map(|m| m["ackId"].clone()).collect();
        client
            .call(
                Method::POST,
                &format!("{name}:acknowledge"),
                &[],
                Some(&json!({ "ackIds": ids })),
            )
            .await?;
    }
    print_list(
        c.format,
        &received,
        &[
            "DATA",
            "MESSAGE_ID",
            "ATTRIBUTES",
            "DELIVERY_ATTEMPT",
            "ACK_ID",
        ],
        |m| received_row(m, auto_ack),
    )
}

/// One pulled message as a table row: its data as text when it is UTF-8.
fn received_row(m: &Value, auto_ack: bool) -> Vec<String> {
    let data = m["message"]["data"].as_str().unwrap_or("");
    let text = STANDARD
        .decode(data)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| data.to_owned());
    let attrs = m["message"]["attributes"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        text,
        cell(&m["message"]["messageId"]),
        attrs,
        cell(&m["deliveryAttempt"]),
        if auto_ack {
            "-".into()
        } else {
            cell(&m["ackId"])
        },
    ]
}
