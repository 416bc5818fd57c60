//! `google.pubsub.v1.Publisher` and `Subscriber` over gRPC, on a `PubsubService`.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream as FuturesStream;
use perch_proto::google::rpc;
use perch_proto::pubsub as pb;
use perch_proto::pubsub::publisher_server::Publisher;
use perch_proto::pubsub::subscriber_server::Subscriber;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{convert, mask_paths, to_status};
use crate::service::{ACK_DEADLINE_MAX_SECONDS, ACK_DEADLINE_MIN_SECONDS};
use crate::{PubsubService, names};

/// Largest gRPC request accepted: a full 10 MB publish plus framing.
pub const MAX_REQUEST_BYTES: usize = 12 * 1024 * 1024;
/// Most messages one StreamingPull response carries.
const STREAM_RESPONSE_MAX_MESSAGES: usize = 1000;
/// Flow control when the client sets none (≤ 0 means unlimited; this bounds a response).
const STREAM_DEFAULT_MAX_OUTSTANDING: usize = 10_000;

/// The Publisher and Subscriber gRPC services.
#[derive(Debug, Clone)]
pub struct PubsubApi {
    service: PubsubService,
}

impl PubsubApi {
    pub fn new(service: PubsubService) -> PubsubApi {
        PubsubApi { service }
    }

    pub fn publisher_server(self) -> pb::publisher_server::PublisherServer<PubsubApi> {
        pb::publisher_server::PublisherServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    pub fn subscriber_server(self) -> pb::subscriber_server::SubscriberServer<PubsubApi> {
        pb::subscriber_server::SubscriberServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    pub fn service(&self) -> &PubsubService {
        &self.service
    }
}

fn project(s: &str) -> Result<String, Status> {
    names::project(s).map_err(|r| to_status(r.into()))
}

fn page_size(n: i32) -> Result<usize, Status> {
    usize::try_from(n)
        .map_err(|_| Status::invalid_argument(format!("pageSize must not be negative, got {n}")))
}

/// The error exactly-once clients expect for refused ack ids: INVALID_ARGUMENT whose details
/// start with an `ErrorInfo` mapping each id to `PERMANENT_FAILURE_INVALID_ACK_ID`.
fn invalid_ack_ids_status(ids: &[String]) -> Status {
    let info = rpc::ErrorInfo {
        reason: "EXACTLY_ONCE_ACKID_FAILURE".into(),
        domain: "pubsub.googleapis.com".into(),
        metadata: ids
            .iter()
            .map(|id| (id.clone(), "PERMANENT_FAILURE_INVALID_ACK_ID".to_owned()))
            .collect::<HashMap<_, _>>(),
    };
    let message = format!(
        "{} ack ids are no longer valid (their lease expired or was superseded)",
        ids.len()
    );
    let status = rpc::Status {
        code: tonic::Code::InvalidArgument as i32,
        message: message.clone(),
        details: vec![pbjson_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec().into(),
        }],
    };
    Status::with_details(
        tonic::Code::InvalidArgument,
        message,
        status.encode_to_vec().into(),
    )
}

#[tonic::async_trait]
impl Publisher for PubsubApi {
    async fn create_topic(
        &self,
        request: Request<pb::Topic>,
    ) -> Result<Response<pb::Topic>, Status> {
        let topic = convert::topic_from_proto(request.get_ref()).map_err(to_status)?;
        let created = self.service.create_topic(topic).await.map_err(to_status)?;
        Ok(Response::new(convert::topic_to_proto(&created)))
    }

    async fn update_topic(
        &self,
        request: Request<pb::UpdateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let req = request.into_inner();
        let topic = req
            .topic
            .ok_or_else(|| Status::invalid_argument("'topic' is required"))?;
        let update = convert::topic_from_proto(&topic).map_err(to_status)?;
        let t = self
            .service
            .update_topic(update, &mask_paths(req.update_mask))
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::topic_to_proto(&t)))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let req = request.into_inner();
        let messages = req
            .messages
            .into_iter()
            .map(convert::message_from_proto)
            .collect();
        let published = self
            .service
            .publish(&req.topic, messages)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::PublishResponse {
            message_ids: published.message_ids,
        }))
    }

    async fn get_topic(
        &self,
        request: Request<pb::GetTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let t = self
            .service
            .get_topic(&request.get_ref().topic)
            .map_err(to_status)?;
        Ok(Response::new(convert::topic_to_proto(&t)))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let req = request.into_inner();
        let (topics, next) = self
            .service
            .list_topics(
                &project(&req.project)?,
                page_size(req.page_size)?,
                &req.page_token,
            )
            .map_err(to_status)?;
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics.iter().map(convert::topic_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        request: Request<pb::ListTopicSubscriptionsRequest>,
    ) -> Result<Response<pb::ListTopicSubscriptionsResponse>, Status> {
        let req = request.into_inner();
        let (subscriptions, next) = self
            .service
            .list_topic_subscriptions(&req.topic, page_size(req.page_size)?, &req.page_token)
            .map_err(to_status)?;
        Ok(Response::new(pb::ListTopicSubscriptionsResponse {
            subscriptions,
            next_page_token: next,
        }))
    }

    async fn list_topic_snapshots(
        &self,
        request: Request<pb::ListTopicSnapshotsRequest>,
    ) -> Result<Response<pb::ListTopicSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let (snapshots, next) = self
            .service
            .list_topic_snapshots(&req.topic, page_size(req.page_size)?, &req.page_token)
            .map_err(to_status)?;
        Ok(Response::new(pb::ListTopicSnapshotsResponse {
            snapshots,
            next_page_token: next,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        self.service
            .delete_topic(&request.get_ref().topic)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn detach_subscription(
        &self,
        request: Request<pb::DetachSubscriptionRequest>,
    ) -> Result<Response<pb::DetachSubscriptionResponse>, Status> {
        self.service
            .detach_subscription(&request.get_ref().subscription)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DetachSubscriptionResponse {}))
    }
}

/// Parses a `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long to wait so that an empty answer reaches the client before its deadline (SPEC.md
/// §7.5): 90% of it, less 100 ms for the trip back.
fn answer_before(client_deadline: Duration) -> Duration {
    client_deadline
        .mul_f64(0.9)
        .saturating_sub(Duration::from_millis(100))
}

type ResponseStream =
    Pin<Box<dyn FuturesStream<Item = Result<pb::StreamingPullResponse, Status>> + Send>>;

fn check_stream_deadline(seconds: i32) -> Result<Duration, Status> {
    if !(ACK_DEADLINE_MIN_SECONDS..=ACK_DEADLINE_MAX_SECONDS).contains(&seconds) {
        return Err(Status::invalid_argument(format!(
            "streamAckDeadlineSeconds must be between 10 and 600, got {seconds}"
        )));
    }
    Ok(Duration::from_secs(seconds as u64))
}

fn limit(v: i64, default: usize) -> usize {
    if v <= 0 {
        default
    } else {
        usize::try_from(v).unwrap_or(usize::MAX)
    }
}

#[tonic::async_trait]
impl Subscriber for PubsubApi {
    async fn create_subscription(
        &self,
        request: Request<pb::Subscription>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let config = convert::subscription_from_proto(request.get_ref()).map_err(to_status)?;
        let created = self
            .service
            .create_subscription(config)
            .await
            .map_err(to_status)?;
        Ok(Response::new(self.subscription_proto(&created)))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let c = self
            .service
            .get_subscription(&request.get_ref().subscription)
            .map_err(to_status)?;
        Ok(Response::new(self.subscription_proto(&c)))
    }

    async fn update_subscription(
        &self,
        request: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let req = request.into_inner();
        let s = req
            .subscription
            .ok_or_else(|| Status::invalid_argument("'subscription' is required"))?;
        let update = convert::subscription_from_proto(&s).map_err(to_status)?;
        let c = self
            .service
            .update_subscription(update, &mask_paths(req.update_mask))
            .await
            .map_err(to_status)?;
        Ok(Response::new(self.subscription_proto(&c)))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let req = request.into_inner();
        let (subs, next) = self
            .service
            .list_subscriptions(
                &project(&req.project)?,
                page_size(req.page_size)?,
                &req.page_token,
            )
            .map_err(to_status)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subs.iter().map(|c| self.subscription_proto(c)).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        self.service
            .delete_subscription(&request.get_ref().subscription)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<pb::ModifyAckDeadlineRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let req = request.into_inner();
        let refused = self
            .service
            .modify_ack_deadline(&req.subscription, &req.ack_ids, req.ack_deadline_seconds)
            .map_err(to_status)?;
        if !refused.is_empty() && self.exactly_once(&req.subscription) {
            return Err(invalid_ack_ids_status(&refused));
        }
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let req = request.into_inner();
        if req.ack_ids.is_empty() {
            return Err(Status::invalid_argument("ackIds must not be empty"));
        }
        let refused = self
            .service
            .acknowledge(&req.subscription, &req.ack_ids)
            .map_err(to_status)?;
        if self.exactly_once(&req.subscription) {
            // Exactly-once: a successful Acknowledge promises no redelivery, even after a crash.
            self.service.persist_acks().await.map_err(to_status)?;
            if !refused.is_empty() {
                return Err(invalid_ack_ids_status(&refused));
            }
        }
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<pb::PullResponse>, Status> {
        let client_wait = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(answer_before);
        let req = request.into_inner();
        let max = usize::try_from(req.max_messages).unwrap_or(0);
        #[allow(deprecated)]
        let deliveries = self
            .service
            .pull(&req.subscription, max, req.return_immediately, client_wait)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::PullResponse {
            received_messages: deliveries.into_iter().map(convert::received).collect(),
        }))
    }

    type StreamingPullStream = ResponseStream;

    async fn streaming_pull(
        &self,
        request: Request<tonic::Streaming<pb::StreamingPullRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        if first.subscription.is_empty() {
            return Err(Status::invalid_argument(
                "the first StreamingPullRequest must name the subscription",
            ));
        }
        let mut deadline = check_stream_deadline(first.stream_ack_deadline_seconds)?;
        let name = first.subscription.clone();
        let mut stream = self.service.open_stream(&name).map_err(to_status)?;
        let max_messages = limit(
            first.max_outstanding_messages,
            STREAM_DEFAULT_MAX_OUTSTANDING,
        );
        let max_bytes = limit(first.max_outstanding_bytes, usize::MAX);
        let service = self.service.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::StreamingPullResponse, Status>>(4);
        let (exactly_once, ordering) = stream.subscription_properties();
        let properties = Some(pb::streaming_pull_response::SubscriptionProperties {
            exactly_once_delivery_enabled: exactly_once,
            message_ordering_enabled: ordering,
        });
        let first_confirmations =
            handle_stream_request(&service, &name, &first, exactly_once, true).await;
        tokio::spawn(async move {
            let mut pending = match first_confirmations {
                Ok(c) => c,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            loop {
                if stream.is_deleted() {
                    let _ = tx
                        .send(Err(Status::not_found(format!(
                            "Resource not found (resource={}).",
                            names::id(&name)
                        ))))
                        .await;
                    return;
                }
                if stream.is_detached() {
                    let _ = tx
                        .send(Err(Status::failed_precondition(format!(
                            "subscription `{name}` is detached from its topic"
                        ))))
                        .await;
                    return;
                }
                let room = max_messages.min(STREAM_RESPONSE_MAX_MESSAGES + stream.outstanding().0);
                let deliveries = match stream.take(room, max_bytes, deadline).await {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                if !deliveries.is_empty() || pending.is_some() {
                    let (ack_confirm, modack_confirm) = pending.take().unwrap_or_default();
                    let response = pb::StreamingPullResponse {
                        received_messages: deliveries.into_iter().map(convert::received).collect(),
                        acknowledge_confirmation: ack_confirm,
                        modify_ack_deadline_confirmation: modack_confirm,
                        subscription_properties: properties,
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                    continue;
                }
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            if req.stream_ack_deadline_seconds != 0 {
                                match check_stream_deadline(req.stream_ack_deadline_seconds) {
                                    Ok(d) => deadline = d,
                                    Err(s) => { let _ = tx.send(Err(s)).await; return; }
                                }
                            }
                            match handle_stream_request(&service, &name, &req, exactly_once, false).await {
                                Ok(c) => pending = c,
                                Err(s) => { let _ = tx.send(Err(s)).await; return; }
                            }
                        }
                        // The client half-closed or went away: end the stream; its leases return.
                        Ok(None) | Err(_) => return,
                    },
                    _ = stream.wait() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn modify_push_config(
        &self,
        request: Request<pb::ModifyPushConfigRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let req = request.into_inner();
        let push = req.push_config.as_ref().and_then(convert::push_from_proto);
        self.service
            .modify_push_config(&req.subscription, push)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let s = self
            .service
            .get_snapshot(&request.get_ref().snapshot)
            .map_err(to_status)?;
        Ok(Response::new(convert::snapshot_to_proto(&s)))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let (snaps, next) = self
            .service
            .list_snapshots(
                &project(&req.project)?,
                page_size(req.page_size)?,
                &req.page_token,
            )
            .map_err(to_status)?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: snaps.iter().map(convert::snapshot_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let req = request.into_inner();
        let labels = req.labels.into_iter().collect();
        let s = self
            .service
            .create_snapshot(&req.name, &req.subscription, labels)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::snapshot_to_proto(&s)))
    }

    async fn update_snapshot(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let req = request.into_inner();
        let snap = req
            .snapshot
            .ok_or_else(|| Status::invalid_argument("'snapshot' is required"))?;
        let update = convert::snapshot_update_from_proto(&snap).map_err(to_status)?;
        let s = self
            .service
            .update_snapshot(update, &mask_paths(req.update_mask))
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::snapshot_to_proto(&s)))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        self.service
            .delete_snapshot(&request.get_ref().snapshot)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn seek(
        &self,
        request: Request<pb::SeekRequest>,
    ) -> Result<Response<pb::SeekResponse>, Status> {
        let req = request.into_inner();
        match req.target {
            Some(pb::seek_request::Target::Time(t)) => {
                let time = chrono::DateTime::<chrono::Utc>::try_from(t)
                    .map_err(|_| Status::invalid_argument("'time' is not a valid timestamp"))?;
                self.service
                    .seek_to_time(&req.subscription, time)
                    .await
                    .map_err(to_status)?;
            }
            Some(pb::seek_request::Target::Snapshot(s)) => {
                self.service
                    .seek_to_snapshot(&req.subscription, &s)
                    .await
                    .map_err(to_status)?;
            }
            None => return Err(Status::invalid_argument("seek needs 'time' or 'snapshot'")),
        }
        Ok(Response::new(pb::SeekResponse {}))
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
    let mut ack_confirm = None;
    let mut modack_confirm = None;
    if !req.ack_ids.is_empty() {
        let refused = service.acknowledge(name, &req.ack_ids).map_err(to_status)?;
        if exactly_once {
            service.persist_acks().await.map_err(to_status)?;
            ack_confirm = Some(pb::streaming_pull_response::AcknowledgeConfirmation {
                ack_ids: req
                    .ack_ids
                    .iter()
                    .filter(|id| !refused.contains(id))
                    .cloned()
                    .collect(),
                invalid_ack_ids: refused,
                ..Default::default()
            });
        }
    }
    if !req.modify_deadline_ack_ids.is_empty() {
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
        let mut refused_all = Vec::new();
        for (secs, ids) in by_seconds {
            refused_all.extend(
                service
                    .modify_ack_deadline(name, &ids, secs.min(ACK_DEADLINE_MAX_SECONDS))
                    .map_err(to_status)?,
            );
        }
        if exactly_once {
            modack_confirm = Some(pb::streaming_pull_response::ModifyAckDeadlineConfirmation {
                ack_ids: req
                    .modify_deadline_ack_ids
                    .iter()
                    .filter(|id| !refused_all.contains(id))
                    .cloned()
                    .collect(),
                invalid_ack_ids: refused_all,
                ..Default::default()
            });
        }
    }
    Ok(
        (ack_confirm.is_some() || modack_confirm.is_some())
            .then_some((ack_confirm, modack_confirm)),
    )
}

impl PubsubApi {
    fn subscription_proto(&self, c: &crate::SubscriptionConfig) -> pb::Subscription {
        let topic_retention = self
            .service
            .get_topic(&c.topic)
            .ok()
            .and_then(|t| t.message_retention_seconds);
        convert::subscription_to_proto(c, topic_retention)
    }

    fn exactly_once(&self, subscription: &str) -> bool {
        self.service
            .get_subscription(subscription)
            .map(|c| c.enable_exactly_once_delivery)
            .unwrap_or(false)
    }
}

/// `google.iam.v1.IAMPolicy` for Pub/Sub resources. Perch is single-admin: the resource must
/// exist, `GetIamPolicy` returns a fixed empty policy, `SetIamPolicy` echoes what it was given
/// without storing it, and `TestIamPermissions` grants every permission asked (docs/pubsub.md).
#[tonic::async_trait]
impl perch_proto::google::iam::v1::iam_policy_server::IamPolicy for PubsubApi {
    async fn set_iam_policy(
        &self,
        request: Request<perch_proto::google::iam::v1::SetIamPolicyRequest>,
    ) -> Result<Response<perch_proto::google::iam::v1::Policy>, Status> {
        let req = request.into_inner();
        self.check_iam_resource(&req.resource)?;
        Ok(Response::new(req.policy.unwrap_or_else(fixed_policy)))
    }

    async fn get_iam_policy(
        &self,
        request: Request<perch_proto::google::iam::v1::GetIamPolicyRequest>,
    ) -> Result<Response<perch_proto::google::iam::v1::Policy>, Status> {
        self.check_iam_resource(&request.get_ref().resource)?;
        Ok(Response::new(fixed_policy()))
    }

    async fn test_iam_permissions(
        &self,
        request: Request<perch_proto::google::iam::v1::TestIamPermissionsRequest>,
    ) -> Result<Response<perch_proto::google::iam::v1::TestIamPermissionsResponse>, Status> {
        let req = request.into_inner();
        self.check_iam_resource(&req.resource)?;
        Ok(Response::new(
            perch_proto::google::iam::v1::TestIamPermissionsResponse {
                permissions: req.permissions,
            },
        ))
    }
}

/// The policy every Pub/Sub resource reports.
pub(crate) fn fixed_policy() -> perch_proto::google::iam::v1::Policy {
    perch_proto::google::iam::v1::Policy {
        version: 1,
        bindings: vec![],
        audit_configs: vec![],
        etag: b"perch".to_vec(),
    }
}

impl PubsubApi {
    /// The IAM policy service for topics, subscriptions and snapshots.
    pub fn iam_server(
        self,
    ) -> perch_proto::google::iam::v1::iam_policy_server::IamPolicyServer<PubsubApi> {
        perch_proto::google::iam::v1::iam_policy_server::IamPolicyServer::new(self)
    }

    /// Pub/Sub IAM resources must exist.
    pub(crate) fn check_iam_resource(&self, resource: &str) -> Result<(), Status> {
        let found = match resource.split('/').nth(2) {
            Some("topics") => self.service.get_topic(resource).map(drop),
            Some("subscriptions") => self.service.get_subscription(resource).map(drop),
            Some("snapshots") => self.service.get_snapshot(resource).map(drop),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "'{resource}' is not a Pub/Sub topic, subscription or snapshot"
                )));
            }
        };
        found.map_err(to_status)
    }
}
