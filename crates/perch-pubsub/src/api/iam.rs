//! `google.iam.v1.IAMPolicy` for Pub/Sub resources, single-admin (docs/pubsub.md).

use perch_proto::google::iam::v1 as iam;
use tonic::{Request, Response, Status};

use super::grpc::PubsubApi;
use super::to_status;

/// `google.iam.v1.IAMPolicy` for Pub/Sub resources. Perch is single-admin: the resource must
/// exist, `GetIamPolicy` returns a fixed empty policy, `SetIamPolicy` echoes what it was given
/// without storing it, and `TestIamPermissions` grants every permission asked (docs/pubsub.md).
#[tonic::async_trait]
impl iam::iam_policy_server::IamPolicy for PubsubApi {
    async fn set_iam_policy(
        &self,
        request: Request<iam::SetIamPolicyRequest>,
    ) -> Result<Response<iam::Policy>, Status> {
        let req = request.into_inner();
        self.check_iam_resource(&req.resource)?;
        Ok(Response::new(req.policy.unwrap_or_else(fixed_policy)))
    }

    async fn get_iam_policy(
        &self,
        request: Request<iam::GetIamPolicyRequest>,
    ) -> Result<Response<iam::Policy>, Status> {
        self.check_iam_resource(&request.get_ref().resource)?;
        Ok(Response::new(fixed_policy()))
    }

    async fn test_iam_permissions(
        &self,
        request: Request<iam::TestIamPermissionsRequest>,
    ) -> Result<Response<iam::TestIamPermissionsResponse>, Status> {
        let req = request.into_inner();
        self.check_iam_resource(&req.resource)?;
        Ok(Response::new(iam::TestIamPermissionsResponse {
            permissions: req.permissions,
        }))
    }
}

/// The policy every Pub/Sub resource reports.
pub(crate) fn fixed_policy() -> iam::Policy {
    iam::Policy {
        version: 1,
        bindings: vec![],
        audit_configs: vec![],
        etag: b"perch".to_vec(),
    }
}

impl PubsubApi {
    /// The IAM policy service for topics, subscriptions and snapshots.
    pub fn iam_server(self) -> iam::iam_policy_server::IamPolicyServer<PubsubApi> {
        iam::iam_policy_server::IamPolicyServer::new(self)
    }

    /// Pub/Sub IAM resources must exist.
    pub(crate) fn check_iam_resource(&self, resource: &str) -> Result<(), Status> {
        let found = match resource.split('/').nth(2) {
            Some("topics") => self.service().get_topic(resource).map(drop),
            Some("subscriptions") => self.service().get_subscription(resource).map(drop),
            Some("snapshots") => self.service().get_snapshot(resource).map(drop),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "'{resource}' is not a Pub/Sub topic, subscription or snapshot"
                )));
            }
        };
        found.map_err(to_status)
    }
}
