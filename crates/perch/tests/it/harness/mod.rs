//! Starts Perch servers for the tests: in-process (`TestServer::start`) or as a child process
//! of the real binary (`TestServer::spawn`), each on its own temp data dir with port-0
//! listeners, plus the clients and key material the tests use.

mod clients;
mod fixtures;

pub(crate) use clients::*;
pub(crate) use fixtures::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use perch::datadir::{DataDir, Endpoints, read_endpoints};
use perch::{Listeners, ServeConfig};
use perch_proto::iot as pb;
use perch_proto::iot::device_manager_client::DeviceManagerClient;
use serde_json::Value;
use tempfile::TempDir;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long a server may take to come up or go down before the test fails.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How often `wait_until` looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The project and location the tests create resources in.
pub(crate) const LOCATION: &str = "projects/p1/locations/us-central1";

/// `wait_until` for async conditions: polls `condition` until it returns `Some`, failing the test
/// after `deadline`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `condition` until it returns `Some`, failing the test after `deadline`.
pub(crate) fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How the server of a `TestServer` runs.
enum Runner {
    /// `perch::serve` on a thread of its own; the sender stops it, the receiver reports its end.
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: mpsc::Receiver<anyhow::Result<()>>,
        thread: Option<JoinHandle<()>>,
    },
    /// `perch serve` as a child process; stderr goes to `log`.
    Child {
        child: Child,
        log: PathBuf,
    },
    Stopped,
}

/// A running Perch server on a temp data dir. Dropping it stops the server and removes the dir.
pub(crate) struct TestServer {
    root: Option<TempDir>,
    data_dir: PathBuf,
    pub(crate) admin: SocketAddr,
    pub(crate) grpc: SocketAddr,
    /// The MQTT-over-TLS listener (spawned servers only) and the CA that signed its certificate.
    pub(crate) mqtt: Option<SocketAddr>,
    pub(crate) ca: Option<PathBuf>,
    /// The admin token; `None` for a `--dev` server.
    pub(crate) token: Option<String>,
    runner: Runner,
    /// `Some(dev)` for an in-process server, `None` for a spawned one.
    in_process: Option<bool>,
    /// How many times this data dir was started before (names the log files).
    starts: usize,
}

impl TestServer {
    /// Runs `perch::serve` in-process on a new temp dir; `dev` drops the admin token.
    pub(crate) fn start(dev: bool) -> TestServer {
        let root = tempfile::tempdir().expect("temp dir");
        TestServer::start_in(root, dev, 0)
    }

    fn start_in(root: TempDir, dev: bool, starts: usize) -> TestServer {
        install_crypto_provider();
        let data_dir = root.path().join("data");
        let dir = DataDir::open(&data_dir).expect("open the data dir");
        let token = (!dev).then(|| dir.admin_token().expect("admin token"));
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener.set_nonblocking(true).expect("non-blocking");
            listener
        };
        let (admin_std, grpc_std) = (bind(), bind());
        let admin = admin_std.local_addr().expect("admin addr");
        let grpc = grpc_std.local_addr().expect("grpc addr");
        let config = ServeConfig {
            data_dir: data_dir.clone(),
            dev,
            tls_cert: None,
            tls_key: None,
            tls_sans: vec![],
            insecure_admin: false,
            bridge: Default::default(),
            telemetry_retention: None,
            provisioning: Default::default(),
            log_segment_max_bytes: perch_store::embedded::SEGMENT_MAX_BYTES,
            http: Default::default(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("perch-server-{}", admin.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("server runtime");
                let result = runtime.block_on(async move {
                    let listeners = Listeners {
                        admin: tokio::net::TcpListener::from_std(admin_std)?,
                        grpc: tokio::net::TcpListener::from_std(grpc_std)?,
                        mqtt: None,
                        mqtt_plain: None,
                        device_http: None,
                    };
                    perch::serve(config, dir, listeners, async move {
                        let _ = stop_rx.await;
                    })
                    .await
                });
                let _ = done_tx.send(result);
            })
            .expect("spawn the server thread");
        let mut server = TestServer {
            root: Some(root),
            data_dir,
            admin,
            grpc,
            mqtt: None,
            ca: None,
            token,
            in_process: Some(dev),
            runner: Runner::InProcess {
                stop: Some(stop_tx),
                done: done_rx,
                thread: Some(thread),
            },
            starts,
        };
        let endpoints = server.wait_for_endpoints();
        assert_eq!(endpoints.admin, admin.to_string());
        assert_eq!(endpoints.grpc, grpc.to_string());
        server
    }

    /// Runs `perch serve` (the real binary, not `--dev`) as a child process on a new temp dir.
    pub(crate) fn spawn() -> TestServer {
        let root = tempfile::tempdir().expect("temp dir");
        TestServer::spawn_in(root, 0)
    }

    fn spawn_in(root: TempDir, starts: usize) -> TestServer {
        install_crypto_provider();
        let data_dir = root.path().join("data");
        // A SIGKILLed run leaves its endpoints file; the new server removes it, but only once it
        // runs, so remove it first lest we read the old addresses.
        let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
        let log = root.path().join(format!("server-{starts}.log"));
        let child = perch_command()
            .args(["serve", "--data-dir"])
            .arg(&data_dir)
            .args(serve_port_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("spawn perch serve");
        let mut server = TestServer {
            root: Some(root),
            data_dir,
            admin: "127.0.0.1:0".parse().expect("addr"),
            grpc: "127.0.0.1:0".parse().expect("addr"),
            mqtt: None,
            ca: None,
            token: None,
            runner: Runner::Child { child, log },
            in_process: None,
            starts,
        };
        let endpoints = server.wait_for_endpoints();
        server.admin = endpoints.admin.parse().expect("admin address");
        server.grpc = endpoints.grpc.parse().expect("grpc address");
        server.mqtt = endpoints
            .mqtt
            .as_deref()
            .map(|a| a.parse().expect("mqtt address"));
        server.ca = Some(PathBuf::from(&endpoints.ca));
        server.token = Some(
            std::fs::read_to_string(server.data_dir.join("admin-token"))
                .expect("admin-token next to endpoints.json")
                .trim()
                .to_owned(),
        );
        server
    }

    /// Waits for `endpoints.json`, failing early (with the server's error) if it stops.
    fn wait_for_endpoints(&mut self) -> Endpoints {
        let data_dir = self.data_dir.clone();
        let runner = &mut self.runner;
        wait_until("endpoints.json", STARTUP_DEADLINE, || {
            match runner {
                Runner::InProcess { done, .. } => {
                    if let Ok(result) = done.try_recv() {
                        panic!("the server stopped while starting: {result:?}");
                    }
                }
                Runner::Child { child, log } => {
                    if let Some(status) = child.try_wait().expect("try_wait") {
                        panic!(
                            "perch serve exited with {status} while starting:\n{}",
                            std::fs::read_to_string(log).unwrap_or_default()
                        );
                    }
                }
                Runner::Stopped => unreachable!("waiting for a stopped server"),
            }
            read_endpoints(&data_dir).ok()
        })
    }

    /// The server's data dir (what `--data-dir` names).
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `http://ADMIN`.
    pub(crate) fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// A JSON client for the admin REST API that sends the server's token.
    pub(crate) fn rest(&self) -> Rest {
        Rest::new(self.admin_url(), self.token.clone())
    }

    /// A JSON client for the admin REST API that sends `token` (or nothing).
    pub(crate) fn rest_with_token(&self, token: Option<&str>) -> Rest {
        Rest::new(self.admin_url(), token.map(str::to_owned))
    }

    /// A DeviceManager gRPC client that sends the server's token.
    pub(crate) async fn grpc_client(&self) -> Grpc {
        self.grpc_client_with_token(self.token.as_deref()).await
    }

    /// A DeviceManager gRPC client that sends `token` (or nothing).
    pub(crate) async fn grpc_client_with_token(&self, token: Option<&str>) -> Grpc {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("grpc uri")
            .connect()
            .await
            .expect("connect to the gRPC listener");
        let token = token.map(|t| {
            format!("Bearer {t}")
                .parse::<AsciiMetadataValue>()
                .expect("token is ASCII")
        });
        DeviceManagerClient::with_interceptor(channel, Bearer(token))
    }

    /// Runs `perch iot --data-dir DIR ARGS…` against this server.
    pub(crate) fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_group("iot", args)
    }

    /// Runs `perch provision --data-dir DIR ARGS…` against this server.
    pub(crate) fn provision_cli(&self, args: &[&str]) -> CliOutput {
        self.cli_group("provision", args)
    }

    /// Runs `perch pubsub --data-dir DIR ARGS…` against this server.
    pub(crate) fn pubsub_cli(&self, args: &[&str]) -> CliOutput {
        self.cli_group("pubsub", args)
    }

    /// Runs `perch telemetry --data-dir DIR ARGS…` against this server.
    pub(crate) fn telemetry_cli(&self, args: &[&str]) -> CliOutput {
        self.cli_group("telemetry", args)
    }

    fn cli_group(&self, group: &str, args: &[&str]) -> CliOutput {
        let output = perch_command()
            .arg(group)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run perch");
        CliOutput::from(output)
    }

    /// The child process of a spawned server.
    fn child(&mut self) -> &mut Child {
        match &mut self.runner {
            Runner::Child { child, .. } => child,
            _ => panic!("only a spawned server has a process"),
        }
    }

    /// Stops an in-process server the way SIGTERM stops `perch serve`, and returns what
    /// `perch::serve` returned. Async so that the test's clients can take part in the
    /// graceful shutdown.
    pub(crate) async fn shutdown(&mut self) -> anyhow::Result<()> {
        let Runner::InProcess {
            stop, done, thread, ..
        } = std::mem::replace(&mut self.runner, Runner::Stopped)
        else {
            panic!("shutdown() is for in-process servers; use terminate() or kill()");
        };
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let result = tokio::task::spawn_blocking(move || done.recv_timeout(STARTUP_DEADLINE))
            .await
            .expect("join the waiter")
            .expect("the server stops within the deadline");
        if let Some(thread) = thread {
            thread.join().expect("the server thread did not panic");
        }
        result
    }

    /// Sends SIGTERM to a spawned server and waits for it to exit.
    pub(crate) async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child().id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let end = Instant::now() + STARTUP_DEADLINE;
        let status = loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < end, "perch serve ignored SIGTERM");
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        self.runner = Runner::Stopped;
        status
    }

    /// Sends SIGKILL to a spawned server and reaps it.
    pub(crate) fn kill(&mut self) {
        let child = self.child();
        child.kill().expect("SIGKILL perch serve");
        child.wait().expect("reap perch serve");
        self.runner = Runner::Stopped;
    }

    /// Stops the server if it still runs (gracefully) and starts it again, the same way, on the
    /// same data dir.
    pub(crate) async fn restart(mut self) -> TestServer {
        match &self.runner {
            Runner::InProcess { .. } => self.shutdown().await.expect("the server stops cleanly"),
            Runner::Child { .. } => assert!(self.terminate().await.success()),
            Runner::Stopped => {}
        }
        let root = self.root.take().expect("the temp dir");
        match self.in_process {
            Some(dev) => TestServer::start_in(root, dev, self.starts + 1),
            None => TestServer::spawn_in(root, self.starts + 1),
        }
    }
}

impl Drop for TestServer {
    /// Kills a spawned server; tells an in-process one to stop without waiting (its graceful
    /// shutdown may need the test's clients, which cannot run while `drop` blocks).
    fn drop(&mut self) {
        match std::mem::replace(&mut self.runner, Runner::Stopped) {
            Runner::InProcess { stop, .. } => {
                if let Some(stop) = stop {
                    let _ = stop.send(());
                }
            }
            Runner::Child { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Runner::Stopped => {}
        }
    }
}

/// `perch` (the binary under test) with no client settings inherited from the environment.
pub(crate) fn perch_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_perch"));
    for var in [
        "PERCH_ENDPOINT",
        "PERCH_TOKEN",
        "PERCH_DATA_DIR",
        "PERCH_PROJECT",
    ] {
        command.env_remove(var);
    }
    command.env("PERCH_LOG", "warn");
    command
}

/// Port-0 addresses for every listener `perch serve` has.
pub(crate) fn serve_port_args() -> [&'static str; 8] {
    [
        "--admin",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
        "--mqtt",
        "127.0.0.1:0",
        "--device-http",
        "127.0.0.1:0",
    ]
}

/// What a CLI run printed and how it ended.
#[derive(Debug)]
pub(crate) struct CliOutput {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl From<Output> for CliOutput {
    fn from(output: Output) -> CliOutput {
        CliOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl CliOutput {
    /// Asserts success and returns stdout.
    pub(crate) fn ok(&self) -> &str {
        assert!(self.status.success(), "perch failed: {self:?}");
        &self.stdout
    }

    /// Parses stdout as JSON (after asserting success).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}
