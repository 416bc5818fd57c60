//! `google.pubsub.v1.Publisher` and `Subscriber` over gRPC, on a `PubsubService`.

use std::collections::HashMap;
use std::time::Duration;

use perch_proto::google::rpc;
use perch_proto::pubsub as pb;
use perch_proto::pubsub::publisher_server::Publisher;
use perch_proto::pubsub::subscriber_server::Subscriber;
use prost::Message;
use tonic::{Request, Response, Status};

use super::streaming::{self, ResponseStream};
use super::{convert, mask_paths, to_status};
use crate::{PubsubService, names};

/// Largest gRPC request accepted: a full 10 MB publish plus framing.
pub const MAX_REQUEST_BYTES: usize = 12 * 1024 * 1024;

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
        streaming::start(self.service.clone(), request.into_inner())
            .await
            .map(Response::new)
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
