//! `perch pubsub`, `perch provision` and `perch telemetry`.

use super::*;

#[test]
fn pubsub_topic_subscription_publish_and_filtered_pull() {
    let server = TestServer::spawn();
    server.pubsub_cli(&["topics", "create", "temperature"]).ok();
    server
        .pubsub_cli(&[
            "subscriptions",
            "create",
            "temp-sub",
            "--topic",
            "temperature",
            "--filter",
            r#"attributes.subFolder = "temperature""#,
        ])
        .ok();
    let listed = server
        .pubsub_cli(&["subscriptions", "list"])
        .ok()
        .to_owned();
    assert!(
        listed.contains("projects/perch/subscriptions/temp-sub"),
        "{listed}"
    );
    for (msg, folder) in [("21.5", "temperature"), ("noise", "other")] {
        let out = server
            .pubsub_cli(&[
                "topics",
                "publish",
                "temperature",
                "--message",
                msg,
                "--attribute",
                &format!("subFolder={folder}"),
            ])
            .ok()
            .to_owned();
        assert!(out.starts_with("messageIds: "), "{out}");
    }
    let pulled = server
        .pubsub_cli(&[
            "subscriptions",
            "pull",
            "temp-sub",
            "--auto-ack",
            "--limit",
            "10",
            "--format",
            "json",
        ])
        .json();
    let received = pulled.as_array().expect("a list of received messages");
    assert_eq!(received.len(), 1, "{pulled}");
    assert_eq!(received[0]["message"]["data"], "MjEuNQ==");
    assert_eq!(
        received[0]["message"]["attributes"]["subFolder"],
        "temperature"
    );
    // Acked: nothing is left.
    let again = server
        .pubsub_cli(&["subscriptions", "pull", "temp-sub", "--format", "json"])
        .json();
    assert_eq!(again.as_array().map(Vec::len), Some(0), "{again}");

    let missing = server.pubsub_cli(&["subscriptions", "pull", "nope"]);
    assert!(!missing.status.success());
    assert_eq!(lines(&missing.stderr).len(), 1, "{}", missing.stderr);
    assert!(missing.stderr.contains("NOT_FOUND"), "{}", missing.stderr);
}

#[test]
fn provision_bootstraps_lists_and_decisions() {
    let server = TestServer::spawn();
    server
        .cli(&with_region(&[
            "registries",
            "create",
            "reg",
            "--event-notification-config",
            "topic=t",
        ]))
        .ok();
    let out = tempfile::tempdir().expect("temp dir");
    let out_dir = out.path().to_str().expect("utf-8 path");
    let created = server
        .provision_cli(&in_reg(&[
            "bootstraps",
            "create",
            "lot-1",
            "--out",
            out_dir,
            "--quota",
            "5",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(created["deviceQuota"], 5, "{created}");
    assert!(
        created.get("privateKey").is_none(),
        "the private key goes to a file, not stdout: {created}"
    );
    let key = out.path().join("bootstrap_private.pem");
    let mode = std::fs::metadata(&key)
        .expect("private key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let csv = out.path().join("deny.csv");
    std::fs::write(
        &csv,
        "serial,000a,compromised\nmac,b8:27:eb:00:00:02,abusive\n",
    )
    .expect("csv");
    server
        .provision_cli(&in_reg(&[
            "denylist",
            "import",
            "--file",
            csv.to_str().expect("utf-8"),
        ]))
        .ok();
    let listed = server
        .provision_cli(&in_reg(&["denylist", "list"]))
        .ok()
        .to_owned();
    assert!(row(&listed, "SERIAL").contains(&"000a"), "{listed}");
    assert!(row(&listed, "MAC").contains(&"abusive"), "{listed}");

    let disabled = server
        .provision_cli(&in_reg(&[
            "bootstraps",
            "disable",
            "lot-1",
            "--format",
            "json",
        ]))
        .json();
    assert_eq!(disabled["enabled"], false, "{disabled}");
    let missing = server.provision_cli(&in_reg(&[
        "allowlist",
        "remove",
        "--kind",
        "serial",
        "--value",
        "nope",
    ]));
    assert!(!missing.status.success());
    assert!(
        missing.stderr.contains("not on the allow list"),
        "{}",
        missing.stderr
    );
}

#[test]
fn telemetry_sink_keeps_a_topic_and_query_and_anomalies_read_it_back() {
    let server = TestServer::spawn();
    server.pubsub_cli(&["topics", "create", "temperature"]).ok();
    server
        .telemetry_cli(&["sink", "create", "temperature"])
        .ok();
    let listed = server.telemetry_cli(&["sink", "list"]).ok().to_owned();
    assert!(
        listed.contains("projects/perch/subscriptions/perch-sink-temperature"),
        "{listed}"
    );
    let publish = |reading: f64, device: &str| {
        server
            .pubsub_cli(&[
                "topics",
                "publish",
                "temperature",
                "--message",
                &format!(r#"{{"temperature_c": {reading}}}"#),
                "--attribute",
                &format!("deviceId={device}"),
            ])
            .ok();
    };
    for (reading, device) in [(21.5, "pi-1"), (19.0, "pi-2"), (22.0, "pi-1")] {
        publish(reading, device);
    }
    let points = wait_until(
        "the sink to store three messages",
        Duration::from_secs(15),
        || {
            let out = server.telemetry_cli(&["query", "--format", "json"]).json();
            (out.as_array().map(Vec::len) == Some(3)).then_some(out)
        },
    );
    assert_eq!(points[0]["json"]["temperature_c"], 21.5, "{points}");
    let pi1 = server
        .telemetry_cli(&["query", "--device", "pi-1", "--format", "json"])
        .json();
    let readings: Vec<f64> = pi1
        .as_array()
        .expect("a list of points")
        .iter()
        .map(|p| p["json"]["temperature_c"].as_f64().expect("a reading"))
        .collect();
    assert_eq!(readings, [21.5, 22.0]);
    let table = server
        .telemetry_cli(&["query", "--device", "pi-2"])
        .ok()
        .to_owned();
    assert!(table.contains("pi-2") && table.contains("19"), "{table}");
    let bad = server.telemetry_cli(&["query", "--since", "yesterday"]);
    assert!(
        !bad.status.success() && bad.stderr.contains("RFC 3339"),
        "{bad:?}"
    );
    // Steady readings warm a model up; a jump is then listed as an anomaly.
    for i in 0..21 {
        publish(4.0 + [0.0, 0.06, -0.06][i % 3], "fridge");
    }
    publish(85.0, "fridge");
    let anomalies = wait_until("the spike to be flagged", Duration::from_secs(15), || {
        let out = server
            .telemetry_cli(&["anomalies", "--format", "json"])
            .json();
        (out.as_array().map(Vec::len) == Some(1)).then_some(out)
    });
    assert_eq!(anomalies[0]["deviceId"], "fridge", "{anomalies}");
    assert_eq!(anomalies[0]["value"], 85.0, "{anomalies}");
    let table = server.telemetry_cli(&["anomalies"]).ok().to_owned();
    assert!(
        table.contains("fridge") && table.contains("temperature_c"),
        "{table}"
    );
    server
        .telemetry_cli(&["sink", "delete", "temperature"])
        .ok();
    let listed = server.telemetry_cli(&["sink", "list"]).ok().to_owned();
    assert!(!listed.contains("perch-sink-temperature"), "{listed}");
}
