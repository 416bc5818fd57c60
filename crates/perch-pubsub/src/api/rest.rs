//! Pub/Sub v1 over REST (`/v1/projects/{p}/topics|subscriptions|snapshots…`), transcoded onto
//! the gRPC handlers so both surfaces answer alike; emulator-style `PUT` with an empty body
//! creates a topic.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use perch_api::status_response;
use perch_proto::google::iam::v1 as iam;
use perch_proto::pubsub as pb;
use perch_proto::pubsub::publisher_server::Publisher;
use perch_proto::pubsub::subscriber_server::Subscriber;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

use super::grpc::PubsubApi;
use super::to_snake_case;

/// Largest REST request (Google's front end: 10,485,760 bytes).
pub const REST_MAX_REQUEST_BYTES: usize = 10_485_760;

/// The Pub/Sub REST routes, to be mounted on the admin listener behind the admin-token layer.
pub fn router(api: PubsubApi) -> Router {
    Router::new()
        .route(
            "/v1/projects/{project}/{collection}",
            any(dispatch_collection),
        )
        .route(
            "/v1/projects/{project}/{collection}/{*rest}",
            any(dispatch_resource),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            REST_MAX_REQUEST_BYTES + 1,
        ))
        .with_state(api)
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = bytes.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            r
        }
        Err(e) => status_response(&Status::internal(format!("response encoding failed: {e}"))),
    }
}

fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "the request body is not valid JSON for this method: {e}"
        ))
    })
}

fn query(raw: Option<&str>) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        map.entry(to_snake_case(&k))
            .or_default()
            .push(v.into_owned());
    }
    map
}

fn first<'a>(q: &'a HashMap<String, Vec<String>>, k: &str) -> &'a str {
    q.get(k)
        .and_then(|v| v.first())
        .map(String::as_str)
        .unwrap_or("")
}

fn page_size(q: &HashMap<String, Vec<String>>) -> Result<i32, Status> {
    match first(q, "page_size") {
        "" => Ok(0),
        v => v
            .parse()
            .map_err(|_| Status::invalid_argument(format!("pageSize must be a number, got '{v}'"))),
    }
}

async fn read_body(request: Request) -> Result<Bytes, Status> {
    let body = axum::body::to_bytes(request.into_body(), REST_MAX_REQUEST_BYTES + 1)
        .await
        .map_err(|_| {
            Status::invalid_argument(format!(
                "Request payload size exceeds the limit: {REST_MAX_REQUEST_BYTES} bytes."
            ))
        })?;
    if body.len() > REST_MAX_REQUEST_BYTES {
        return Err(Status::invalid_argument(format!(
            "Request payload size exceeds the limit: {REST_MAX_REQUEST_BYTES} bytes."
        )));
    }
    Ok(body)
}

fn req<T>(m: T) -> tonic::Request<T> {
    tonic::Request::new(m)
}

async fn dispatch_collection(
    State(api): State<PubsubApi>,
    Path((project, collection)): Path<(String, String)>,
    request: Request,
) -> Response {
    let q = query(request.uri().query());
    let method = request.method().clone();
    let result = async {
        if method != Method::GET {
            return Err(Status::not_found(format!(
                "no Pub/Sub method serves {method} /v1/projects/{project}/{collection}"
            )));
        }
        let parent = format!("projects/{project}");
        let (size, token) = (page_size(&q)?, first(&q, "page_token").to_owned());
        Ok(match collection.as_str() {
            "topics" => json(
                api.list_topics(req(pb::ListTopicsRequest {
                    project: parent,
                    page_size: size,
                    page_token: token,
                }))
                .await?
                .get_ref(),
            ),
            "subscriptions" => json(
                api.list_subscriptions(req(pb::ListSubscriptionsRequest {
                    project: parent,
                    page_size: size,
                    page_token: token,
                }))
                .await?
                .get_ref(),
            ),
            "snapshots" => json(
                api.list_snapshots(req(pb::ListSnapshotsRequest {
                    project: parent,
                    page_size: size,
                    page_token: token,
                }))
                .await?
                .get_ref(),
            ),
            _ => {
                return Err(Status::not_found(format!(
                    "no Pub/Sub collection '{collection}'"
                )));
            }
        })
    }
    .await;
    result.unwrap_or_else(|s| status_response(&s))
}

async fn dispatch_resource(
    State(api): State<PubsubApi>,
    Path((project, collection, rest)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    let q = query(request.uri().query());
    let result = async {
        let body = read_body(request).await?;
        let rest = percent_encoding::percent_decode_str(&rest)
            .decode_utf8_lossy()
            .into_owned();
        let (path, verb) = match rest.rsplit_once(':') {
            Some((p, v)) if !v.contains('/') => (p.to_owned(), Some(v.to_owned())),
            _ => (rest.clone(), None),
        };
        let (id, sub_collection) = match path.split_once('/') {
            Some((id, sub)) => (id.to_owned(), Some(sub.to_owned())),
            None => (path.clone(), None),
        };
        let call = Call {
            method: &method,
            name: format!("projects/{project}/{collection}/{id}"),
            sub_collection: sub_collection.as_deref(),
            verb: verb.as_deref(),
            body: &body,
        };
        handle(&api, &collection, &call, &q).await
    }
    .await;
    result.unwrap_or_else(|s| status_response(&s))
}

/// One REST call on a named resource: `{method} /v1/{name}[/{sub_collection}][:{verb}]`.
struct Call<'a> {
    method: &'a Method,
    name: String,
    sub_collection: Option<&'a str>,
    verb: Option<&'a str>,
    body: &'a Bytes,
}

impl Call<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn no_method(&self) -> Status {
        Status::not_found(format!(
            "no Pub/Sub method serves {} /v1/{}{}{}",
            self.method,
            self.name,
            self.sub_collection
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            self.verb.map(|v| format!(":{v}")).unwrap_or_default()
        ))
    }
}

async fn handle(
    api: &PubsubApi,
    collection: &str,
    call: &Call<'_>,
    q: &HashMap<String, Vec<String>>,
) -> Result<Response, Status> {
    // IAM is single-admin: the resource must exist, the policy is fixed (docs/pubsub.md).
    if let Some(v @ ("getIamPolicy" | "setIamPolicy" | "testIamPermissions")) = call.verb {
        api.check_iam_resource(&call.name)?;
        return iam(v, call.body);
    }
    let (size, token) = (page_size(q)?, first(q, "page_token").to_owned());
    let response = match collection {
        "topics" => topics(api, call, size, token).await?,
        "subscriptions" => subscriptions(api, call).await?,
        "snapshots" => snapshots(api, call).await?,
        _ => None,
    };
    response.ok_or_else(|| call.no_method())
}

/// The fixed single-admin IAM policy methods.
fn iam(verb: &str, body: &Bytes) -> Result<Response, Status> {
    Ok(match verb {
        "getIamPolicy" => json(&super::iam::fixed_policy()),
        "setIamPolicy" => {
            let r: iam::SetIamPolicyRequest = parse(body)?;
            json(&r.policy.unwrap_or_else(super::iam::fixed_policy))
        }
        _ => {
            let r: iam::TestIamPermissionsRequest = parse(body)?;
            json(&iam::TestIamPermissionsResponse {
                permissions: r.permissions,
            })
        }
    })
}

/// Topic methods; `None` when no topic method serves the call.
async fn topics(
    api: &PubsubApi,
    call: &Call<'_>,
    size: i32,
    token: String,
) -> Result<Option<Response>, Status> {
    let (name, body) = (call.name(), call.body);
    Ok(Some(match (call.sub_collection, call.verb, call.method) {
        (None, None, &Method::PUT) => {
            let mut t: pb::Topic = parse(body)?;
            t.name = name;
            json(api.create_topic(req(t)).await?.get_ref())
        }
        (None, None, &Method::GET) => json(
            api.get_topic(req(pb::GetTopicRequest { topic: name }))
                .await?
                .get_ref(),
        ),
        (None, None, &Method::PATCH) => {
            let mut r: pb::UpdateTopicRequest = parse(body)?;
            r.topic.get_or_insert_with(Default::default).name = name;
            json(api.update_topic(req(r)).await?.get_ref())
        }
        (None, None, &Method::DELETE) => json(
            api.delete_topic(req(pb::DeleteTopicRequest { topic: name }))
                .await?
                .get_ref(),
        ),
        (None, Some("publish"), &Method::POST) => {
            let mut r: pb::PublishRequest = parse(body)?;
            r.topic = name;
            json(api.publish(req(r)).await?.get_ref())
        }
        (Some("subscriptions"), None, &Method::GET) => json(
            api.list_topic_subscriptions(req(pb::ListTopicSubscriptionsRequest {
                topic: name,
                page_size: size,
                page_token: token,
            }))
            .await?
            .get_ref(),
        ),
        (Some("snapshots"), None, &Method::GET) => json(
            api.list_topic_snapshots(req(pb::ListTopicSnapshotsRequest {
                topic: name,
                page_size: size,
                page_token: token,
            }))
            .await?
            .get_ref(),
        ),
        _ => return Ok(None),
    }))
}

/// Subscription methods; `None` when no subscription method serves the call.
async fn subscriptions(api: &PubsubApi, call: &Call<'_>) -> Result<Option<Response>, Status> {
    let (name, body) = (call.name(), call.body);
    Ok(Some(match (call.sub_collection, call.verb, call.method) {
        (None, None, &Method::PUT) => {
            let mut s: pb::Subscription = parse(body)?;
            s.name = name;
            json(api.create_subscription(req(s)).await?.get_ref())
        }
        (None, None, &Method::GET) => json(
            api.get_subscription(req(pb::GetSubscriptionRequest { subscription: name }))
                .await?
                .get_ref(),
        ),
        (None, None, &Method::PATCH) => {
            let mut r: pb::UpdateSubscriptionRequest = parse(body)?;
            r.subscription.get_or_insert_with(Default::default).name = name;
            json(api.update_subscription(req(r)).await?.get_ref())
        }
        (None, None, &Method::DELETE) => json(
            api.delete_subscription(req(pb::DeleteSubscriptionRequest { subscription: name }))
                .await?
                .get_ref(),
        ),
        (None, Some(verb), &Method::POST) => subscription_verb(api, verb, name, body).await?,
        _ => return Ok(None),
    }))
}

/// `POST …/subscriptions/{id}:{verb}`.
async fn subscription_verb(
    api: &PubsubApi,
    verb: &str,
    name: String,
    body: &Bytes,
) -> Result<Response, Status> {
    Ok(match verb {
        "pull" => {
            let mut r: pb::PullRequest = parse(body)?;
            r.subscription = name;
            json(api.pull(req(r)).await?.get_ref())
        }
        "acknowledge" => {
            let mut r: pb::AcknowledgeRequest = parse(body)?;
            r.subscription = name;
            json(api.acknowledge(req(r)).await?.get_ref())
        }
        "modifyAckDeadline" => {
            let mut r: pb::ModifyAckDeadlineRequest = parse(body)?;
            r.subscription = name;
            json(api.modify_ack_deadline(req(r)).await?.get_ref())
        }
        "modifyPushConfig" => {
            let mut r: pb::ModifyPushConfigRequest = parse(body)?;
            r.subscription = name;
            json(api.modify_push_config(req(r)).await?.get_ref())
        }
        "seek" => {
            let mut r: pb::SeekRequest = parse(body)?;
            r.subscription = name;
            json(api.seek(req(r)).await?.get_ref())
        }
        "detach" => json(
            Publisher::detach_subscription(
                api,
                req(pb::DetachSubscriptionRequest { subscription: name }),
            )
            .await?
            .get_ref(),
        ),
        other => {
            return Err(Status::not_found(format!(
                "subscriptions have no method ':{other}'"
            )));
        }
    })
}

/// Snapshot methods; `None` when no snapshot method serves the call.
async fn snapshots(api: &PubsubApi, call: &Call<'_>) -> Result<Option<Response>, Status> {
    let (name, body) = (call.name(), call.body);
    Ok(Some(match (call.sub_collection, call.verb, call.method) {
        (None, None, &Method::PUT) => {
            let mut r: pb::CreateSnapshotRequest = parse(body)?;
            r.name = name;
            json(api.create_snapshot(req(r)).await?.get_ref())
        }
        (None, None, &Method::GET) => json(
            api.get_snapshot(req(pb::GetSnapshotRequest { snapshot: name }))
                .await?
                .get_ref(),
        ),
        (None, None, &Method::PATCH) => {
            let mut r: pb::UpdateSnapshotRequest = parse(body)?;
            r.snapshot.get_or_insert_with(Default::default).name = name;
            json(api.update_snapshot(req(r)).await?.get_ref())
        }
        (None, None, &Method::DELETE) => json(
            api.delete_snapshot(req(pb::DeleteSnapshotRequest { snapshot: name }))
                .await?
                .get_ref(),
        ),
        _ => return Ok(None),
    }))
}
