//! IAM policies on registries and groups.

use super::*;

#[tokio::test]
async fn iam_get_set_and_test_on_a_registry_and_a_group() {
    let (_server, mut client) = with_registry().await;
    for resource in [
        registry_name("reg"),
        format!("{}/groups/g1", registry_name("reg")),
    ] {
        let policy = client
            .get_iam_policy(iam::GetIamPolicyRequest {
                resource: resource.clone(),
                options: None,
            })
            .await
            .expect("get policy")
            .into_inner();
        assert_eq!(policy.version, 1);
        assert_eq!(policy.etag, b"perch");

        let wanted = iam::Policy {
            version: 1,
            bindings: vec![iam::Binding {
                role: "roles/cloudiot.viewer".into(),
                members: vec!["user:ada@example.com".into()],
                condition: None,
            }],
            audit_configs: vec![],
            etag: b"perch".to_vec(),
        };
        let set = client
            .set_iam_policy(iam::SetIamPolicyRequest {
                resource: resource.clone(),
                policy: Some(wanted.clone()),
                update_mask: None,
            })
            .await
            .expect("set policy")
            .into_inner();
        assert_eq!(set, wanted);

        let permissions = vec![
            "cloudiot.devices.get".to_owned(),
            "cloudiot.devices.update".to_owned(),
        ];
        let granted = client
            .test_iam_permissions(iam::TestIamPermissionsRequest {
                resource,
                permissions: permissions.clone(),
            })
            .await
            .expect("test permissions")
            .into_inner();
        assert_eq!(granted.permissions, permissions);
    }
    expect_code(
        client
            .get_iam_policy(iam::GetIamPolicyRequest {
                resource: registry_name("nope"),
                options: None,
            })
            .await,
        Code::NotFound,
    );
}
