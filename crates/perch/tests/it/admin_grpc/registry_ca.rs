//! Registry CA.

use super::*;

#[tokio::test]
async fn a_registry_ca_admits_only_device_certificates_it_signed() {
    let server = TestServer::start(false);
    let mut client = server.grpc_client().await;
    let ca = TestCa::new("registry ca");
    let other = TestCa::new("other ca");
    let registry = client
        .create_device_registry(pb::CreateDeviceRegistryRequest {
            parent: LOCATION.into(),
            device_registry: Some(pb::DeviceRegistry {
                id: "reg".into(),
                credentials: vec![pb::RegistryCredential {
                    credential: Some(pb::registry_credential::Credential::PublicKeyCertificate(
                        pb::PublicKeyCertificate {
                            format: pb::PublicKeyCertificateFormat::X509CertificatePem as i32,
                            certificate: ca.cert_pem.clone(),
                            x509_details: None,
                        },
                    )),
                }],
                ..Default::default()
            }),
        })
        .await
        .expect("create a registry with a CA")
        .into_inner();
    let Some(pb::registry_credential::Credential::PublicKeyCertificate(cert)) =
        &registry.credentials[0].credential
    else {
        panic!("no certificate: {registry:?}");
    };
    let details = cert.x509_details.as_ref().expect("x509 details");
    assert!(details.subject.contains("registry ca"), "{details:?}");
    assert_eq!(details.public_key_type, "EC");

    let refused = [
        credential(pb::PublicKeyFormat::Es256X509Pem, &other.sign_device_cert()),
        credential(pb::PublicKeyFormat::Es256X509Pem, &self_signed_es256_cert()),
        credential(pb::PublicKeyFormat::Es256Pem, &es256_public_key_pem()),
        credential(pb::PublicKeyFormat::Es256X509Pem, &ca.cert_pem),
    ];
    for (i, cred) in refused.into_iter().enumerate() {
        let mut new = device(&format!("refused-{i}"));
        new.credentials = vec![cred];
        expect_code(
            client
                .create_device(pb::CreateDeviceRequest {
                    parent: registry_name("reg"),
                    device: Some(new),
                })
                .await,
            Code::InvalidArgument,
        );
    }

    let mut signed = device("dev-1");
    signed.credentials = vec![credential(
        pb::PublicKeyFormat::Es256X509Pem,
        &ca.sign_device_cert(),
    )];
    create_device(&mut client, "reg", signed).await;

    // The check also runs when credentials are patched in.
    let mut patch = device("dev-1");
    patch.name = device_name("reg", "dev-1");
    patch.credentials = vec![credential(
        pb::PublicKeyFormat::Es256X509Pem,
        &other.sign_device_cert(),
    )];
    expect_code(
        client
            .update_device(pb::UpdateDeviceRequest {
                device: Some(patch.clone()),
                update_mask: mask(&["credentials"]),
            })
            .await,
        Code::InvalidArgument,
    );
    patch.credentials = vec![
        credential(pb::PublicKeyFormat::Es256X509Pem, &ca.sign_device_cert()),
        credential(pb::PublicKeyFormat::Es256X509Pem, &ca.sign_device_cert()),
    ];
    let updated = client
        .update_device(pb::UpdateDeviceRequest {
            device: Some(patch),
            update_mask: mask(&["credentials"]),
        })
        .await
        .expect("signed certificates are accepted")
        .into_inner();
    assert_eq!(updated.credentials.len(), 2);
}
