//! Shared end-to-end harness: a real broker on 127.0.0.1 port 0 with a temporary data
//! directory (in-process or as a child process that can be killed), and `Wire`, a raw
//! protocol client that speaks frames directly so protocol tests do not depend on the
//! client crate.
#![allow(dead_code)]

pub mod disk;
pub mod fault_disk;
pub mod pki;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use squall::config::ServerConfig;
use squall::model::QueueConfig;
use squall::server::{self, ServerHandle};
use squall_proto::v1::{self, request::Op, response, server_message::Kind};
use squall_proto::{decode_frame, encode_frame, ErrorCode, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Queue defaults that keep tests fast: short leases and backoff.
pub fn fast_queue_defaults() -> QueueConfig {
    QueueConfig {
        lease_ms: 2_000,
        max_attempts: 5,
        backoff_min_ms: 50,
        backoff_max_ms: 200,
        ..QueueConfig::default()
    }
}

/// An in-process broker on 127.0.0.1:0 with its own temporary data directory.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub config: ServerConfig,
    handle: Option<ServerHandle>,
    _dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: dir.path().join("data"),
            queue_defaults: fast_queue_defaults(),
            shutdown_grace: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        tweak(&mut config);
        let handle = server::start(config.clone()).await.expect("broker starts");
        TestBroker {
            addr: handle.local_addr(),
            config,
            handle: Some(handle),
            _dir: Some(dir),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("running")
    }

    /// The HTTP address of `/metrics`, `/healthz` and `/readyz`.
    pub fn http_addr(&self) -> SocketAddr {
        self.handle().http_addr().expect("http enabled")
    }

    /// Graceful stop; the data directory stays.
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await.expect("clean shutdown");
        }
    }

    /// Graceful stop, then start again on the same data directory (new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let handle = start_again(&self.config).await;
        self.addr = handle.local_addr();
        self.handle = Some(handle);
    }
}

/// Starts a broker on a data directory another broker of this process just released.
/// sled 1.0.0-alpha.124 releases its directory lock from a background thread a moment
/// after the last handle is dropped (its metadata worker acknowledges the shutdown,
/// then exits), so an immediate reopen in the same process can find the lock still
/// held (`WouldBlock`); a new process after an exit never does. Squall's own lock file
/// (`store/datadir.rs`) is likewise released when the last store handle, held by the
/// writer and checkpoint threads until they end, is dropped (`InUse`). Retry briefly.
async fn start_again(config: &ServerConfig) -> ServerHandle {
    use squall::store::{DataDirProblem, StoreError};
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let still_held = |e: &StoreError| match e {
            StoreError::Io(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            StoreError::DataDir { problem, .. } => *problem == DataDirProblem::InUse,
            _ => false,
        };
        match server::start(config.clone()).await {
            Ok(handle) => return handle,
            Err(server::ServerError::Store(e))
                if still_held(&e) && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("broker restarts: {e:?}"),
        }
    }
}

/// The broker binary as a child process, for tests that kill it.
pub struct ChildBroker {
    pub addr: SocketAddr,
    /// The HTTP address, unless started with `--http off`.
    pub http: Option<SocketAddr>,
    child: Child,
}

/// What a child broker's log said, line by line, as it says it.
pub enum LogEvent {
    /// "metrics and health checks at http://ADDR": the HTTP port is bound.
    Http(SocketAddr),
    /// "listening on ADDR": recovery is done and the protocol port is bound.
    Listening(SocketAddr),
}

/// Starts `squall serve` with `args` and `env` and returns the child and a stream of
/// its start-up log events. The HTTP port is 127.0.0.1:0 unless `args` names one.
pub fn spawn_squall(
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, std::sync::mpsc::Receiver<LogEvent>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_squall"));
    cmd.arg("serve").args(args);
    if !args.contains(&"--http") {
        cmd.args(["--http", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .env(
            "RUST_LOG",
            std::env::var("SQUALL_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn squall");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let addr_after = |marker: &str| {
                line.split(marker)
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.trim_end_matches(['"', ',']).parse::<SocketAddr>().ok())
            };
            if let Some(a) = addr_after("health checks at http://") {
                let _ = tx.send(LogEvent::Http(a));
            } else if let Some(a) = addr_after("listening on ") {
                let _ = tx.send(LogEvent::Listening(a));
            }
            if std::env::var_os("SQUALL_TEST_LOGS").is_some() {
                eprintln!("[broker] {line}");
            }
        }
    });
    (child, rx)
}

impl ChildBroker {
    /// A client of it with a 20 s request timeout (for tests whose broker is slow on
    /// purpose: full disks, small volumes).
    pub async fn patient_client(&self) -> squall_client::Client {
        squall_client::Client::builder()
            .request_timeout(Duration::from_secs(20))
            .connect(self.addr)
            .await
            .unwrap()
    }

    /// Starts `squall serve` on 127.0.0.1:0 with `data_dir` and waits for its listen line.
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> ChildBroker {
        Self::spawn_env(data_dir, extra, &[])
    }

    /// Like `spawn`, with extra environment variables.
    pub fn spawn_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ChildBroker {
        Self::try_start(data_dir, "127.0.0.1:0", extra, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts it on a fixed address (a restart where clients expect it), retrying while
    /// the port is still held by the process that was just killed.
    pub fn spawn_on(data_dir: &Path, listen: SocketAddr, extra: &[&str]) -> ChildBroker {
        let mut last_error = String::new();
        for _ in 0..10 {
            match Self::try_start(data_dir, &listen.to_string(), extra, &[]) {
                Ok(broker) => return broker,
                Err(e) => {
                    last_error = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("broker did not start on {listen}: {last_error}");
    }

    fn try_start(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ChildBroker, String> {
        let data_dir = data_dir.to_str().expect("utf-8 temp path");
        let mut args = vec!["--listen", listen, "--data-dir", data_dir];
        args.extend_from_slice(extra);
        let (mut child, events) = spawn_squall(&args, env);
        let mut http = None;
        loop {
            match events.recv_timeout(WAIT) {
                Ok(LogEvent::Http(a)) => http = Some(a),
                Ok(LogEvent::Listening(addr)) => return Ok(ChildBroker { addr, http, child }),
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    return Err(format!(
                        "broker on {listen} did not listen ({e:?}); exit status {status:?}"
                    ));
                }
            }
        }
    }

    /// The broker's resident memory (VmRSS of /proc/PID/status), bytes.
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the broker's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc status");
        kib * 1024
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`, ...) to the broker process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    /// Waits for the broker to exit by itself, failing the test after `within`.
    pub fn wait_exit(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for broker") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the broker did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit, failing the test after `within`.
    pub fn terminate_within(self, within: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait_exit(within)
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for broker")
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` until it holds, failing the test after `within`.
pub async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A protocol error as the broker sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

/// A raw protocol connection: frames in, frames out, nothing hidden.
pub struct Wire {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
    deliveries: VecDeque<v1::Delivery>,
    /// Connection-level errors (id 0) received so far.
    pub goodbyes: Vec<WireError>,
    /// Responses that arrived while waiting for deliveries (pipelined requests).
    pub stray: Vec<(u64, Result<response::Result, WireError>)>,
}

impl From<v1::Error> for WireError {
    fn from(e: v1::Error) -> WireError {
        WireError {
            code: ErrorCode::try_from(e.code).expect("known code"),
            message: e.message,
        }
    }
}

/// A response's result, with errors turned into `WireError`.
fn result_of(r: v1::Response) -> Result<response::Result, WireError> {
    match r.result.expect("response has a result") {
        response::Result::Error(e) => Err(e.into()),
        ok => Ok(ok),
    }
}

impl Wire {
    /// Connects without saying Hello.
    pub async fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Wire {
            stream,
            buf: BytesMut::new(),
            next_id: 1,
            deliveries: VecDeque::new(),
            goodbyes: Vec::new(),
            stray: Vec::new(),
        }
    }

    /// Connects and completes the handshake.
    pub async fn hello(addr: SocketAddr) -> Wire {
        let mut w = Wire::connect(addr).await;
        let r = w
            .call(Op::Hello(v1::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "test".into(),
                token: String::new(),
            }))
            .await;
        assert!(
            matches!(r, Ok(response::Result::Hello(_))),
            "hello failed: {r:?}"
        );
        w
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a request and returns its id.
    pub async fn send(&mut self, op: Op) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        encode_frame(&v1::Request { id, op: Some(op) }, &mut buf);
        self.send_raw(&buf).await;
        id
    }

    /// The next frame from the broker, or None on EOF.
    pub async fn recv(&mut self) -> Option<v1::ServerMessage> {
        loop {
            if let Some(m) = decode_frame::<v1::ServerMessage>(&mut self.buf, 64 << 20)
                .expect("broker sends valid frames")
            {
                return Some(m);
            }
            let n = match tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("broker did not answer within {WAIT:?}"),
            };
            if n == 0 {
                return None;
            }
        }
    }

    /// Waits for the response to `id`, buffering deliveries that arrive first.
    pub async fn response(&mut self, id: u64) -> Result<response::Result, WireError> {
        self.response_or_eof(id)
            .await
            .expect("connection open while awaiting a response")
    }

    /// Like `response`, but None if the connection closes first.
    pub async fn response_or_eof(
        &mut self,
        id: u64,
    ) -> Option<Result<response::Result, WireError>> {
        loop {
            let m = self.recv().await?;
            match m.kind.expect("message has a kind") {
                Kind::Delivery(d) => self.deliveries.push_back(d),
                Kind::Response(r) => {
                    let rid = r.id;
                    let result = result_of(r);
                    if rid == id {
                        return Some(result);
                    }
                    if rid == 0 {
                        if let Err(e) = result {
                            self.goodbyes.push(e);
                            continue;
                        }
                    }
                    panic!("unexpected response to {rid}: {result:?}");
                }
            }
        }
    }

    pub async fn call(&mut self, op: Op) -> Result<response::Result, WireError> {
        let id = self.send(op).await;
        self.response(id).await
    }

    pub async fn publish_spec(&mut self, tasks: Vec<v1::TaskSpec>) -> Result<Vec<u64>, WireError> {
        match self
            .call(Op::Publish(v1::Publish {
                tasks,
                ..Default::default()
            }))
            .await?
        {
            response::Result::Publish(ok) => Ok(ok.tasks.iter().map(|t| t.task_id).collect()),
            other => panic!("unexpected publish answer {other:?}"),
        }
    }

    pub async fn publish(&mut self, queue: &str, payload: &str) -> u64 {
        self.publish_spec(vec![spec(queue, payload)])
            .await
            .expect("publish confirmed")[0]
    }

    pub async fn subscribe(&mut self, queue: &str, prefetch: u32) -> u64 {
        match self
            .call(Op::Subscribe(v1::Subscribe {
                queue: queue.into(),
                prefetch,
            }))
            .await
        {
            Ok(response::Result::Subscribe(s)) => s.subscription_id,
            other => panic!("subscribe failed: {other:?}"),
        }
    }

    /// The next delivery within `within`, or None.
    pub async fn try_delivery(&mut self, within: Duration) -> Option<v1::Delivery> {
        if let Some(d) = self.deliveries.pop_front() {
            return Some(d);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(m) =
                decode_frame::<v1::ServerMessage>(&mut self.buf, 64 << 20).expect("valid frame")
            {
                match m.kind.expect("kind") {
                    Kind::Delivery(d) => return Some(d),
                    Kind::Response(r) if r.id == 0 => {
                        if let Err(e) = result_of(r) {
                            self.goodbyes.push(e);
                        }
                        continue;
                    }
                    Kind::Response(r) => {
                        self.stray.push((r.id, result_of(r)));
                        continue;
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn delivery(&mut self) -> v1::Delivery {
        self.try_delivery(WAIT).await.expect("a delivery arrives")
    }

    pub async fn ack(&mut self, d: &v1::Delivery) -> Result<(), WireError> {
        self.call(Op::Ack(v1::Ack {
            task_id: d.task_id,
            lease_token: d.lease_token,
            result: Bytes::new(),
        }))
        .await
        .map(|_| ())
    }

    pub async fn nack(
        &mut self,
        d: &v1::Delivery,
        delay_ms: Option<u64>,
        dead: bool,
        reason: &str,
    ) -> Result<(), WireError> {
        self.call(Op::Nack(v1::Nack {
            task_id: d.task_id,
            lease_token: d.lease_token,
            delay_ms,
            dead,
            reason: reason.into(),
        }))
        .await
        .map(|_| ())
    }

    /// True if the broker closes the connection within the wait (after any frames).
    pub async fn closed_by_peer(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.recv()).await {
                Ok(None) => return true,
                Ok(Some(m)) => {
                    if let Some(Kind::Response(r)) = m.kind {
                        if let Err(e) = result_of(r) {
                            self.goodbyes.push(e);
                        }
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Reads the next frame and expects it to be an error; returns it.
    pub async fn expect_error(&mut self) -> (u64, WireError) {
        let m = self.recv().await.expect("an error frame before close");
        match m.kind {
            Some(Kind::Response(v1::Response {
                id,
                result: Some(response::Result::Error(e)),
            })) => (id, e.into()),
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
}

pub fn spec(queue: &str, payload: &str) -> v1::TaskSpec {
    v1::TaskSpec {
        queue: queue.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

/// A fresh temporary directory path (kept alive by the returned guard).
pub fn temp_data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data");
    (dir, path)
}

/// Non-panicking variants for tests that kill the broker under load, where a refused
/// connect or a broken pipe is expected and means "this broker is gone".
impl Wire {
    /// Connects and completes the handshake, or None if the broker is not there.
    pub async fn try_hello(addr: SocketAddr) -> Option<Wire> {
        let stream = TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let mut w = Wire {
            stream,
            buf: BytesMut::new(),
            next_id: 1,
            deliveries: VecDeque::new(),
            goodbyes: Vec::new(),
            stray: Vec::new(),
        };
        let id = w
            .try_send(Op::Hello(v1::Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "test".into(),
                token: String::new(),
            }))
            .await?;
        match w.response_or_eof(id).await? {
            Ok(response::Result::Hello(_)) => Some(w),
            _ => None,
        }
    }

    /// Sends a request and returns its id, or None if the connection is gone.
    pub async fn try_send(&mut self, op: Op) -> Option<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        encode_frame(&v1::Request { id, op: Some(op) }, &mut buf);
        self.stream.write_all(&buf).await.ok()?;
        Some(id)
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to http");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("http answer in time")
        .expect("read answer");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}
