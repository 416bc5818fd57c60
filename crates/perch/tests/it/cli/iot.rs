//! `perch iot`: registries, devices, configs, credentials, keys and errors.

use super::*;

#[test]
fn registries_create_describe_list_update_delete() {
    let server = TestServer::spawn();
    let created = server.cli(&with_region(&[
        "registries",
        "create",
        "reg-1",
        "--event-notification-config",
        "topic=alerts,subfolder=alerts",
        "--event-notification-config",
        "topic=all",
        "--no-enable-http-config",
    ]));
    let out = created.ok();
    assert!(out.contains("id: reg-1"), "{out}");
    assert!(
        out.contains("eventNotificationConfigs[0].pubsubTopicName: projects/perch/topics/alerts"),
        "{out}"
    );
    server
        .cli(&with_region(&["registries", "create", "reg-2"]))
        .ok();

    let described = server.cli(&with_region(&["registries", "describe", "reg-1"]));
    assert!(
        described
            .ok()
            .contains("name: projects/perch/locations/us-central1/registries/reg-1"),
        "{described:?}"
    );
    let json = server
        .cli(&with_region(&[
            "registries",
            "describe",
            "reg-1",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(json["httpConfig"]["httpEnabledState"], "HTTP_DISABLED");
    assert_eq!(
        json["eventNotificationConfigs"][1]["pubsubTopicName"], "projects/perch/topics/all",
        "the catch-all stays last"
    );

    let listed = server.cli(&with_region(&["registries", "list"]));
    let table = listed.ok();
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(
        row(table, "reg-1"),
        ["reg-1", "us-central1", "true", "false"]
    );
    assert_eq!(
        row(table, "reg-2"),
        ["reg-2", "us-central1", "true", "true"]
    );
    let listed = server
        .cli(&with_region(&["registries", "list", "--format", "json"]))
        .json();
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["reg-1", "reg-2"]);
    let limited = server
        .cli(&with_region(&[
            "registries",
            "list",
            "--limit",
            "1",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(limited.as_array().map(Vec::len), Some(1));

    let updated = server
        .cli(&with_region(&[
            "registries",
            "update",
            "reg-1",
            "--no-enable-mqtt-config",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(updated["mqttConfig"]["mqttEnabledState"], "MQTT_DISABLED");
    assert_eq!(
        updated["httpConfig"]["httpEnabledState"], "HTTP_DISABLED",
        "untouched"
    );
    let nothing = server.cli(&with_region(&["registries", "update", "reg-1"]));
    assert!(!nothing.status.success(), "{nothing:?}");

    let deleted = server.cli(&with_region(&["registries", "delete", "reg-1"]));
    deleted.ok();
    assert!(deleted.stderr.contains("reg-1"), "{deleted:?}");
    let gone = server.cli(&with_region(&["registries", "describe", "reg-1"]));
    assert!(!gone.status.success());
    assert!(gone.stderr.contains("NOT_FOUND"), "{gone:?}");
}

#[test]
fn devices_create_describe_list_update_delete() {
    let server = TestServer::spawn();
    server
        .cli(&with_region(&["registries", "create", "reg"]))
        .ok();
    let (_keys, public_key) = keygen(&server);
    let key_spec = format!("path={public_key},type=es256");
    let created = server
        .cli(&in_reg(&[
            "devices",
            "create",
            "dev-1",
            "--public-key",
            &key_spec,
            "--metadata",
            "site=north",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(created["id"], "dev-1");
    assert_eq!(
        created["credentials"][0]["publicKey"]["format"],
        "ES256_PEM"
    );
    assert_eq!(created["metadata"]["site"], "north");
    let num_id = created["numId"].as_str().expect("numId").to_owned();
    server
        .cli(&in_reg(&[
            "devices",
            "create",
            "gw-1",
            "--device-type",
            "gateway",
            "--auth-method",
            "association-only",
        ]))
        .ok();

    let described = server.cli(&in_reg(&["devices", "describe", "dev-1"]));
    let out = described.ok();
    assert!(out.contains("id: dev-1"), "{out}");
    assert!(out.contains(&format!("numId: {num_id}")), "{out}");
    assert!(out.contains("metadata.site: north"), "{out}");
    let by_num = server
        .cli(&in_reg(&[
            "devices", "describe", &num_id, "--format", "json",
        ]))
        .json();
    assert_eq!(by_num["id"], "dev-1");

    let listed = server.cli(&in_reg(&["devices", "list"]));
    let table = listed.ok();
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(
        row(table, "dev-1")[..4],
        ["dev-1", &num_id, "false", "false"]
    );
    assert_eq!(row(table, "gw-1")[3], "true", "gw-1 is a gateway");
    let only = server
        .cli(&in_reg(&[
            "devices",
            "list",
            "--device-ids",
            "gw-1",
            "--format",
            "json",
        ]))
        .json();
    let ids: Vec<&str> = only
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["gw-1"]);

    let updated = server
        .cli(&in_reg(&[
            "devices",
            "update",
            "dev-1",
            "--blocked",
            "--metadata",
            "site=south,floor=2",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(updated["blocked"], true);
    assert_eq!(
        updated["metadata"],
        serde_json::json!({"site": "south", "floor": "2"})
    );
    assert_eq!(
        updated["credentials"].as_array().map(Vec::len),
        Some(1),
        "credentials untouched"
    );
    let unblocked = server
        .cli(&in_reg(&[
            "devices",
            "update",
            "dev-1",
            "--no-blocked",
            "--format",
            "json",
        ]))
        .json();
    assert!(unblocked.get("blocked").is_none(), "{unblocked}");

    let deleted = server.cli(&in_reg(&["devices", "delete", "gw-1"]));
    deleted.ok();
    assert!(deleted.stderr.contains("gw-1"), "{deleted:?}");
    let remaining = server
        .cli(&in_reg(&["devices", "list", "--format", "json"]))
        .json();
    assert_eq!(remaining.as_array().map(Vec::len), Some(1), "{remaining}");
}

#[test]
fn a_registry_ca_given_to_the_cli_admits_only_certificates_it_signed() {
    let server = TestServer::spawn();
    let files = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pem: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path.to_str().expect("utf-8 path").to_owned()
    };
    let ca = TestCa::new("cli ca");
    let ca_path = write("ca.pem", &ca.cert_pem);
    let signed = write("signed.pem", &ca.sign_device_cert());
    let foreign = write("foreign.pem", &self_signed_es256_cert());
    let registry = server
        .cli(&with_region(&[
            "registries",
            "create",
            "reg",
            "--public-key-path",
            &ca_path,
            "--format",
            "json",
        ]))
        .json();
    let details = &registry["credentials"][0]["publicKeyCertificate"]["x509Details"];
    assert!(
        details["subject"]
            .as_str()
            .is_some_and(|s| s.contains("cli ca")),
        "{registry}"
    );
    let spec = |path: &str| format!("path={path},type=es256-x509");
    server
        .cli(&in_reg(&[
            "devices",
            "create",
            "dev-1",
            "--public-key",
            &spec(&signed),
        ]))
        .ok();
    let refused = server.cli(&in_reg(&[
        "devices",
        "create",
        "dev-2",
        "--public-key",
        &spec(&foreign),
    ]));
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert_eq!(lines(&refused.stderr).len(), 1, "{refused:?}");
    assert!(refused.stderr.contains("INVALID_ARGUMENT"), "{refused:?}");
}

#[test]
fn configs_update_and_list() {
    let server = TestServer::spawn();
    server
        .cli(&with_region(&["registries", "create", "reg"]))
        .ok();
    server.cli(&in_reg(&["devices", "create", "dev-1"])).ok();
    server.cli(&in_reg(&["devices", "create", "dev-2"])).ok();

    let config = server
        .cli(&in_reg(&[
            "devices",
            "configs",
            "update",
            "dev-1",
            "--config-data",
            "fan=on",
            "--version-to-update",
            "1",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(config["version"], "2");
    assert_eq!(config["binaryData"], "ZmFuPW9u");

    let files = tempfile::tempdir().expect("temp dir");
    let file = files.path().join("config.bin");
    std::fs::write(&file, b"from a file").expect("write config");
    server
        .cli(&in_reg(&[
            "devices",
            "configs",
            "update",
            "dev-2",
            "--config-file",
            file.to_str().expect("utf-8 path"),
        ]))
        .ok();
    let stale = server.cli(&in_reg(&[
        "devices",
        "configs",
        "update",
        "dev-2",
        "--config-data",
        "x",
        "--version-to-update",
        "1",
    ]));
    assert!(!stale.status.success(), "{stale:?}");
    assert!(stale.stderr.contains("FAILED_PRECONDITION"), "{stale:?}");

    let listed = server.cli(&in_reg(&["devices", "configs", "list", "dev-1"]));
    let table = listed.ok();
    let rows = lines(table);
    assert!(rows[0].starts_with("VERSION"), "{table}");
    assert!(
        rows[1].starts_with('2') && rows[1].ends_with("fan=on"),
        "{table}"
    );
    assert!(rows[2].starts_with('1'), "{table}");
    let json = server
        .cli(&in_reg(&[
            "devices", "configs", "list", "dev-2", "--format", "json",
        ]))
        .json();
    let versions: Vec<&Value> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|c| &c["version"])
        .collect();
    assert_eq!(versions, ["2", "1"]);
    assert_eq!(json[0]["binaryData"], "ZnJvbSBhIGZpbGU=");
}

#[test]
fn credentials_create_list_delete() {
    let server = TestServer::spawn();
    server
        .cli(&with_region(&["registries", "create", "reg"]))
        .ok();
    server.cli(&in_reg(&["devices", "create", "dev-1"])).ok();
    let (keys, public_key) = keygen(&server);
    let rsa = keys.path().join("rsa_public.pem");
    std::fs::write(&rsa, RSA_PUBLIC_KEY_PEM).expect("write the RSA key");

    let added = server.cli(&in_reg(&[
        "devices",
        "credentials",
        "create",
        "dev-1",
        "--path",
        &public_key,
        "--type",
        "es256",
    ]));
    added.ok();
    server
        .cli(&in_reg(&[
            "devices",
            "credentials",
            "create",
            "dev-1",
            "--path",
            rsa.to_str().expect("utf-8 path"),
            "--type",
            "rs256",
            "--expiration-time",
            "2031-01-01T00:00:00Z",
        ]))
        .ok();
    let wrong_type = server.cli(&in_reg(&[
        "devices",
        "credentials",
        "create",
        "dev-1",
        "--path",
        rsa.to_str().expect("utf-8 path"),
        "--type",
        "es256",
    ]));
    assert!(!wrong_type.status.success(), "{wrong_type:?}");
    assert!(
        wrong_type.stderr.contains("INVALID_ARGUMENT"),
        "{wrong_type:?}"
    );

    let listed = server.cli(&in_reg(&["devices", "credentials", "list", "dev-1"]));
    let table = listed.ok();
    assert_eq!(row(table, "0"), ["0", "ES256_PEM"]);
    assert_eq!(row(table, "1"), ["1", "RSA_PEM", "2031-01-01T00:00:00Z"]);

    server
        .cli(&in_reg(&[
            "devices",
            "credentials",
            "delete",
            "dev-1",
            "--index",
            "0",
        ]))
        .ok();
    let json = server
        .cli(&in_reg(&[
            "devices",
            "credentials",
            "list",
            "dev-1",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(json.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json[0]["publicKey"]["format"], "RSA_PEM");
    let out_of_range = server.cli(&in_reg(&[
        "devices",
        "credentials",
        "delete",
        "dev-1",
        "--index",
        "5",
    ]));
    assert!(!out_of_range.status.success(), "{out_of_range:?}");
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_can_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("utf-8 path");
    let run = || {
        CliOutput::from(
            perch_command()
                .args(["iot", "devices", "keygen", "--out", out])
                .output()
                .expect("run perch"),
        )
    };
    run().ok();
    let private = dir.path().join("ec_private.pem");
    let mode = std::fs::metadata(&private)
        .expect("ec_private.pem")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let private_pem = std::fs::read_to_string(&private).expect("read");
    assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let public_pem = std::fs::read_to_string(dir.path().join("ec_public.pem")).expect("read");
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));

    let again = run();
    assert!(!again.status.success(), "a key is never overwritten");
    assert_eq!(
        std::fs::read_to_string(&private).expect("read"),
        private_pem
    );
}

#[test]
fn an_unknown_device_prints_one_line_on_stderr_and_exits_non_zero() {
    let server = TestServer::spawn();
    server
        .cli(&with_region(&["registries", "create", "reg"]))
        .ok();
    let result = server.cli(&in_reg(&["devices", "describe", "nope"]));
    assert_eq!(result.status.code(), Some(1), "{result:?}");
    assert_eq!(result.stdout, "", "{result:?}");
    let stderr = lines(&result.stderr);
    assert_eq!(stderr.len(), 1, "{result:?}");
    assert!(stderr[0].contains("NOT_FOUND"), "{result:?}");
    assert!(stderr[0].contains("nope"), "{result:?}");
}

#[test]
fn the_cli_without_a_running_server_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let result = CliOutput::from(
        perch_command()
            .arg("iot")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["registries", "list", "--region", "us-central1"])
            .output()
            .expect("run perch"),
    );
    assert_eq!(result.status.code(), Some(1), "{result:?}");
    let stderr = lines(&result.stderr);
    assert_eq!(stderr.len(), 1, "{result:?}");
    assert!(stderr[0].contains("endpoints.json"), "{result:?}");
}
