//! StreamingPull: the first request opens a stream on the subscription; a task then sends
//! leased messages within the client's flow control, applies later requests (acks, deadline
//! changes) and, for exactly-once subscriptions, confirms them once they are on disk.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream as FuturesStream;
use perch_proto::pubsub as pb;
use perch_proto::pubsub::streaming_pull_response::SubscriptionProperties;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{convert, to_status};
use crate::service::{ACK_DEADLINE_MAX_SECONDS, ACK_DEADLINE_MIN_SECONDS};
use crate::{PubsubService, Stream, names};

/// Most messages one StreamingPull response carries.
const STREAM_RESPONSE_MAX_MESSAGES: usize = 1000;
/// Flow control when the client sets none (≤ 0 means unlimited; this bounds a response).
const STREAM_DEFAULT_MAX_OUTSTANDING: usize = 10_000;
/// Responses buffered towards the client.
const STREAM_RESPONSE_BUFFER: usize = 4;

/// The responses of one StreamingPull.
pub(super) type ResponseStream =
    Pin<Box<dyn FuturesStream<Item = Result<pb::StreamingPullResponse, Status>> + Send>>;

/// A stream ack deadline, checked against Google's bounds.
fn check_stream_deadline(seconds: i32) -> Result<Duration, Status> {
    if !(ACK_DEADLINE_MIN_SECONDS..=ACK_DEADLINE_MAX_SECONDS).contains(&seconds) {
        return Err(Status::invalid_argument(format!(
            "streamAckDeadlineSeconds must be between 10 and 600, got {seconds}"
        )));
    }
    Ok(Duration::from_secs(seconds as u64))
}

/// A client flow-control limit; ≤ 0 means none, so `default`.
fn limit(v: i64, default: usize) -> usize {
    if v <= 0 {
        default
    } else {
        usize::try_from(v).unwrap_or(usize::MAX)
    }
}

/// Opens a StreamingPull from its first request and starts the task that serves it.
pub(super) async fn start(
    service: PubsubService,
    mut inbound: tonic::Streaming<pb::StreamingPullRequest>,
) -> Result<ResponseStream, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
    if first.subscription.is_empty() {
        return Err(Status::invalid_argument(
            "the first StreamingPullRequest must name the subscription",
        ));
    }
    let deadline = check_stream_deadline(first.stream_ack_deadline_seconds)?;
    let name = first.subscription.clone();
    let stream = service.open_stream(&name).map_err(to_status)?;
    let (tx, rx) = mpsc::channel(STREAM_RESPONSE_BUFFER);
    let (exactly_once, ordering) = stream.subscription_properties();
    let first_confirmations =
        handle_stream_request(&service, &name, &first, exactly_once, true).await;
    let pump = Pump {
        max_messages: limit(
            first.max_outstanding_messages,
            STREAM_DEFAULT_MAX_OUTSTANDING,
        ),
        max_bytes: limit(first.max_outstanding_bytes, usize::MAX),
        properties: Some(SubscriptionProperties {
            exactly_once_delivery_enabled: exactly_once,
            message_ordering_enabled: ordering,
        }),
        service,
        name,
        stream,
        inbound,
        tx,
        deadline,
        exactly_once,
    };
    tokio::spawn(pump.run(first_confirmations));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// The task serving one StreamingPull.
struct Pump {
    service: PubsubService,
    name: String,
    stream: Stream,
    inbound: tonic::Streaming<pb::StreamingPullRequest>,
    tx: mpsc::Sender<Result<pb::StreamingPullResponse, Status>>,
    deadline: Duration,
    max_messages: usize,
    max_bytes: usize,
    exactly_once: bool,
    properties: Option<SubscriptionProperties>,
}

impl Pump {
    /// Runs until an error (sent to the client), the subscription's deletion or detachment, or
    /// either side going away; dropping the stream then returns its leases.
    async fn run(mut self, first_confirmations: Result<Confirmations, Status>) {
        let mut pending = match first_confirmations {
            Ok(c) => c,
            Err(status) => return self.fail(status).await,
        };
        loop {
            if let Some(status) = self.ended() {
                return self.fail(status).await;
            }
            let room = self
                .max_messages
                .min(STREAM_RESPONSE_MAX_MESSAGES + self.stream.outstanding().0);
            let deliveries = match self.stream.take(room, self.max_bytes, self.deadline).await {
                Ok(d) => d,
                Err(e) => return self.fail(to_status(e)).await,
            };
            if !deliveries.is_empty() || pending.is_some() {
                let (ack_confirm, modack_confirm) = pending.take().unwrap_or_default();
                let response = pb::StreamingPullResponse {
                    received_messages: deliveries.into_iter().map(convert::received).collect(),
                    acknowledge_confirmation: ack_confirm,
                    modify_ack_deadline_confirmation: modack_confirm,
                    subscription_properties: self.properties,
                };
                if self.tx.send(Ok(response)).await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                msg = self.inbound.message() => match msg {
                    Ok(Some(req)) => match self.apply(&req).await {
                        Ok(c) => pending = c,
                        Err(s) => return self.fail(s).await,
                    },
                    // The client half-closed or went away: end the stream; its leases return.
                    Ok(None) | Err(_) => return,
                },
                _ = self.stream.wait() => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    /// Why the stream must end now, if it must: its subscription was deleted or detached.
    fn ended(&self) -> Option<Status> {
        if self.stream.is_deleted() {
            return Some(Status::not_found(format!(
                "Resource not found (resource={}).",
                names::id(&self.name)
            )));
        }
        if self.stream.is_detached() {
            return Some(Status::failed_precondition(format!(
                "subscription `{}` is detached from its topic",
                self.name
            )));
        }
        None
    }

    /// Applies a later request: a new stream ack deadline, acks and deadline changes.
    async fn apply(&mut self, req: &pb::StreamingPullRequest) -> Result<Confirmations, Status> {
        if req.stream_ack_deadline_seconds != 0 {
            self.deadline = check_stream_deadline(req.stream_ack_deadline_seconds)?;
        }
        handle_stream_request(&self.service, &self.name, req, self.exactly_once, false).await
    }

    async fn fail(&self, status: Status) {
        let _ = self.tx.send(Err(status)).await;
    }
}

type Confirmations = Option<(
    Option<pb::streaming_pull_response::AcknowledgeConfirmation>,
    Option<pb::streaming_pull_response::ModifyAckDeadlineConfirmation>,
)>;

/// Applies the acks and deadline changes a StreamingPullRequest carries; for exactly-once
/// subscriptions returns the confirmations to send back, once the acks are on disk.
async fn handle_stream_request(
    service: &PubsubService,
    name: &str,
    req: &pb::StreamingPullRequest,
    exactly_once: bool,
    first: bool,
) -> Result<Confirmations, Status> {
    if !first
        && (!req.subscription.is_empty()
            || req.max_outstanding_messages != 0
            || req.max_outstanding_bytes != 0)
    {
        return Err(Status::invalid_argument(
            "subscription and flow control may only be set on the first StreamingPullRequest",
        ));
    }
    if req.modify_deadline_seconds.len() != req.modify_deadline_ack_ids.len() {
        return Err(Status::invalid_argument(
            "modifyDeadlineSeconds and modifyDeadlineAckIds must have the same length",
        ));
    }
    let ack_confirm = if req.ack_ids.is_empty() {
        None
    } else {
        stream_acks(service, name, &req.ack_ids, exactly_once).await?
    };
    let modack_confirm = if req.modify_deadline_ack_ids.is_empty() {
        None
    } else {
        stream_deadlines(service, name, req, exactly_once)?
    };
    Ok(
        (ack_confirm.is_some() || modack_confirm.is_some())
            .then_some((ack_confirm, modack_confirm)),
    )
}

/// Applies a stream request's acks; exactly-once: confirms them once they are on disk.
async fn stream_acks(
    service: &PubsubService,
    name: &str,
    ack_ids: &[String],
    exactly_once: bool,
) -> Result<Option<pb::streaming_pull_response::AcknowledgeConfirmation>, Status> {
    let refused = service.acknowledge(name, ack_ids).map_err(to_status)?;
    if !exactly_once {
        return Ok(None);
    }
    service.persist_acks().await.map_err(to_status)?;
    Ok(Some(pb::streaming_pull_response::AcknowledgeConfirmation {
        ack_ids: accepted(ack_ids, &refused),
        invalid_ack_ids: refused,
        ..Default::default()
    }))
}

/// Applies a stream request's deadline changes, grouped by deadline; exactly-once: confirms
/// them.
fn stream_deadlines(
    service: &PubsubService,
    name: &str,
    req: &pb::StreamingPullRequest,
    exactly_once: bool,
) -> Result<Option<pb::streaming_pull_response::ModifyAckDeadlineConfirmation>, Status> {
    let mut by_seconds: HashMap<i32, Vec<String>> = HashMap::new();
    for (id, secs) in req
        .modify_deadline_ack_ids
        .iter()
        .zip(&req.modify_deadline_seconds)
    {
        if *secs < 0 {
            return Err(Status::invalid_argument(format!(
                "modifyDeadlineSeconds must not be negative, got {secs}"
            )));
        }
        by_seconds.entry(*secs).or_default().push(id.clone());
    }
    let mut refused = Vec::new();
    for (secs, ids) in by_seconds {
        refused.extend(
            service
                .modify_ack_deadline(name, &ids, secs.min(ACK_DEADLINE_MAX_SECONDS))
                .map_err(to_status)?,
        );
    }
    Ok(exactly_once.then(
        || pb::streaming_pull_response::ModifyAckDeadlineConfirmation {
            ack_ids: accepted(&req.modify_deadline_ack_ids, &refused),
            invalid_ack_ids: refused,
            ..Default::default()
        },
    ))
}

/// The ids of `ids` that are not in `refused`, in order.
fn accepted(ids: &[String], refused: &[String]) -> Vec<String> {
    ids.iter()
        .filter(|id| !refused.contains(id))
        .cloned()
        .collect()
}
