//! `perch serve` start-up errors.

use super::*;

#[test]
fn serve_on_a_locked_data_dir_exits_1_naming_the_lock() {
    let server = TestServer::spawn();
    let second = CliOutput::from(
        perch_command()
            .arg("serve")
            .arg("--data-dir")
            .arg(server.data_dir())
            .args(serve_port_args())
            .output()
            .expect("run perch serve"),
    );
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let stderr = lines(&second.stderr);
    assert_eq!(stderr.len(), 1, "{second:?}");
    assert!(stderr[0].contains("LOCK"), "{second:?}");
    // The first server is unharmed.
    server.cli(&with_region(&["registries", "list"])).ok();
    assert!(server.data_dir().join("endpoints.json").exists());
}

#[test]
fn serve_on_a_busy_admin_port_exits_1_naming_the_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let result = CliOutput::from(
        perch_command()
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--admin", &addr, "--grpc", "127.0.0.1:0"])
            .args(["--mqtt", "127.0.0.1:0", "--device-http", "127.0.0.1:0"])
            .output()
            .expect("run perch serve"),
    );
    assert_eq!(result.status.code(), Some(1), "{result:?}");
    // One error line; log lines before it (e.g. the data dir's modes being tightened) may come.
    let stderr = lines(&result.stderr);
    let errors: Vec<_> = stderr.iter().filter(|l| l.starts_with("perch: ")).collect();
    assert_eq!(errors.len(), 1, "{result:?}");
    assert!(errors[0].contains("--admin"), "{result:?}");
    assert!(errors[0].contains(&addr), "{result:?}");
    assert!(
        !dir.path().join("endpoints.json").exists(),
        "a server that never listened announces no endpoints"
    );
}
