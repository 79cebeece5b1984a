//! The `squall` command line as a user meets it, driving the real binary against a real
//! broker: `consume` stopped by a signal, by `--count`, or by a closed standard output
//! must not spend attempts of tasks it never showed; and what the commands say.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{TestBroker, WAIT};
use squall_client::{Client, Message, PublishOptions, QueueInfo};

async fn client(b: &TestBroker) -> Client {
    Client::connect(b.addr).await.expect("connect")
}

/// The `squall` binary with no server or token taken from the environment.
fn squall() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_squall"));
    cmd.env_remove("SQUALL_SERVER")
        .env_remove("SQUALL_TOKEN")
        .stdin(Stdio::null());
    cmd
}

/// Runs the CLI to completion without blocking the runtime the broker runs on.
async fn run(args: &[&str]) -> Output {
    let mut cmd = squall();
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("run squall"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Publishes `n` tasks to `queue`, each allowed a single attempt: any delivery that
/// counts as one and is not acked sends the task to the dead set.
async fn publish_single_attempt(c: &Client, queue: &str, n: usize, payload_len: usize) {
    let options = PublishOptions::new().max_attempts(1);
    let mut left = n;
    while left > 0 {
        let batch: Vec<Message> = (0..left.min(if payload_len > 1000 { 10 } else { 500 }))
            .map(|i| {
                let payload = format!("{i}:{}", "x".repeat(payload_len));
                Message::new(queue, payload).with_options(options.clone())
            })
            .collect();
        left -= batch.len();
        c.publish_batch(batch).await.expect("publish");
    }
}

async fn queue(c: &Client, name: &str) -> QueueInfo {
    c.queue(name).await.expect("queue info")
}

/// Waits until the broker has taken back every lease of `name` (the consumer's
/// connection may close a moment after its process exits).
async fn settled(c: &Client, name: &str) -> QueueInfo {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let q = queue(c, name).await;
        if q.leased == 0 && q.consumers == 0 {
            return q;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still leased: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next delivery of `name` is a first attempt: nothing before spent one.
async fn next_is_first_attempt(c: &Client, name: &str) {
    let mut sub = c.subscribe(name).prefetch(1).await.unwrap();
    let d = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a delivery")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(d.attempt(), 1, "an attempt was spent before");
    d.ack().await.unwrap();
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT * 3;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("squall consume did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the child's exit (see [`wait_exit`]) and returns it with its stderr.
fn finish(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let status = wait_exit(child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_busy_consume_and_gives_back_what_it_did_not_show() {
    let b = TestBroker::start().await;
    let c = client(&b).await;
    let total = 20_000;
    publish_single_attempt(&c, "busy", total, 8).await;
    let server = b.addr.to_string();
    let mut child = squall()
        .args(["consume", "busy", "--server", &server, "--prefetch", "64"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consume");
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().unwrap();
    let (status, printed, stderr) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = 0usize;
        // Busy: tasks keep arriving faster than they are settled.
        while printed < 20 {
            lines.next().expect("a task line").expect("read");
            printed += 1;
        }
        // SAFETY: kill(2) with the pid of our own child and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        // Read the rest beside: if the signal were missed, wait_exit kills the child
        // (and fails the test) rather than the read waiting forever.
        let rest = std::thread::spawn(move || lines.inspect(|l| assert!(l.is_ok())).count());
        let (status, stderr) = finish(&mut child);
        printed += rest.join().unwrap();
        (status, printed, stderr)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    let q = settled(&c, "busy").await;
    assert!(
        (q.totals.acked as usize) < total,
        "the first Ctrl-C stopped it before the queue was empty"
    );
    assert_eq!(
        q.totals.acked as usize, printed,
        "every task shown was settled"
    );
    assert_eq!(q.dead, 0, "no task lost an attempt it never used: {q:?}");
    assert_eq!(q.ready as usize, total - printed);
    next_is_first_attempt(&c, "busy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_count_spends_no_attempt_of_tasks_it_does_not_show() {
    let b = TestBroker::start().await;
    let c = client(&b).await;
    publish_single_attempt(&c, "counted", 10, 4).await;
    let server = b.addr.to_string();
    for (count, prefetch) in [("1", "16"), ("2", "2"), ("3", "1")] {
        let before = queue(&c, "counted").await;
        let out = run(&[
            "consume",
            "counted",
            "--server",
            &server,
            "--count",
            count,
            "--prefetch",
            prefetch,
        ])
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let n: u64 = count.parse().unwrap();
        assert_eq!(text(&out.stdout).lines().count() as u64, n);
        let q = settled(&c, "counted").await;
        assert_eq!(
            q.dead, 0,
            "--count {count}: a task it never showed died: {q:?}"
        );
        assert_eq!(q.totals.acked, before.totals.acked + n);
        assert_eq!(q.ready, before.ready - n);
    }
    next_is_first_attempt(&c, "counted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_consume_quietly_without_spending_attempts() {
    let b = TestBroker::start().await;
    let c = client(&b).await;
    publish_single_attempt(&c, "piped", 20, 4).await;
    let server = b.addr.to_string();
    let mut child = squall()
        .args(["consume", "piped", "--server", &server, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn consume");
    // The reader goes away before anything is printed.
    drop(child.stdout.take());
    let (status, stderr) = tokio::task::spawn_blocking(move || finish(&mut child))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(141), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "quiet: {stderr}");
    let q = settled(&c, "piped").await;
    assert_eq!((q.ready, q.dead, q.totals.acked), (20, 0, 0), "{q:?}");
    next_is_first_attempt(&c, "piped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_into_head_exits_quietly() {
    // The pipeline from the report: a task longer than what `head` reads.
    let b = TestBroker::start().await;
    let c = client(&b).await;
    publish_single_attempt(&c, "head", 20, 200_000).await;
    let server = b.addr.to_string();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "'{}' consume head --server {server} --json --count 1 | head -c 600 >/dev/null",
            env!("CARGO_BIN_EXE_squall")
        ))
        .env_remove("SQUALL_SERVER");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error"), "quiet: {stderr}");
    let q = settled(&c, "head").await;
    // The task cut short was never shown whole: back, unacked, with no attempt spent.
    assert_eq!((q.ready, q.dead, q.totals.acked), (20, 0, 0), "{q:?}");
    next_is_first_attempt(&c, "head").await;
}

/// `squall serve` on `data_dir` with both ports on 127.0.0.1:0, run to its exit.
fn serve_on(data_dir: &std::path::Path, as_nobody: bool) -> Output {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_squall"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_squall"))
    };
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null());
    // Only refusals are run here; a broker that starts would not exit by itself.
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let (status, stderr) = finish(&mut child);
    Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

/// [`serve_on`] off the runtime's threads.
async fn serve(data_dir: &std::path::Path, as_nobody: bool) -> Output {
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || serve_on(&data_dir, as_nobody))
        .await
        .unwrap()
}

/// One start-up refusal: its exit code, the path named, the reason, once, in plain words.
fn assert_refused(out: &Output, code: i32, path: &std::path::Path, reason: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let path = path.display().to_string();
    assert!(stderr.contains(&path), "names {path}: {stderr}");
    assert!(stderr.contains(reason), "says {reason:?}: {stderr}");
    assert_eq!(stderr.matches(reason).count(), 1, "said once: {stderr}");
    for noise in ["sled:", ".rs:", "os error", "panicked"] {
        assert!(!stderr.contains(noise), "no {noise:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_says_which_data_directory_it_cannot_use_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    assert_refused(
        &serve(&file, false).await,
        73,
        &file,
        "exists and is not a directory",
    );
    let below = file.join("data");
    assert_refused(&serve(&below, false).await, 73, &below, "is a file");

    // A second broker on a directory a running one holds (this process).
    let running = TestBroker::start().await;
    let data = running.data_dir().to_owned();
    let pid = std::process::id();
    assert_refused(
        &serve(&data, false).await,
        78,
        &data,
        &format!("is already in use by another squall process (pid {pid})"),
    );
    drop(running);

    // Unwritable: checked as an unprivileged user (root may write anywhere).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = serve(&locked, true).await;
        assert_refused(&out, 73, &locked, "is not writable by uid 65534");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_names_the_setting_of_a_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    for (flag, other, named) in [
        ("--listen", "--http", "the protocol port, --listen"),
        ("--http", "--listen", "the HTTP port, --http"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = port.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut child = squall()
                .args(["serve", flag, &port, other, "127.0.0.1:0", "--data-dir"])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            finish(&mut child)
        })
        .await
        .unwrap();
        let (status, stderr) = out;
        assert!(!status.success());
        assert!(
            stderr.contains(&format!(
                "cannot listen on {} ({named})",
                taken.local_addr().unwrap()
            )),
            "{stderr}"
        );
        assert_eq!(stderr.matches("in use").count(), 1, "said once: {stderr}");
    }
}

#[test]
fn listen_accepts_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, events) = common::spawn_squall(
        &[
            "--listen",
            "localhost:0",
            "--http",
            "localhost:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let listening = loop {
        match events.recv_timeout(WAIT) {
            Ok(common::LogEvent::Listening(a)) => break Some(a),
            Ok(common::LogEvent::Http(_)) => continue,
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let addr = listening.expect("serve --listen localhost:0 starts");
    assert!(addr.ip().is_loopback(), "{addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_when_it_is_pointed_at_the_http_port_or_given_no_port() {
    let b = TestBroker::start().await;
    let http = b.http_addr().to_string();
    let out = run(&["queues", "--server", &http]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("HTTP port"), "{stderr}");
    assert!(stderr.contains("7600"), "names the protocol port: {stderr}");
    assert!(!stderr.contains("bytes exceeds"), "{stderr}");

    // No port: the default one. Nothing listens on 127.0.0.2:7600 here.
    let out = run(&["queues", "--server", "127.0.0.2"]).await;
    let stderr = text(&out.stderr);
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(69), "{stderr}");
        assert!(stderr.contains("127.0.0.2:7600"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_say_what_they_did() {
    let b = TestBroker::start().await;
    let c = client(&b).await;
    let server = b.addr.to_string();
    let s = server.as_str();

    // Publishing an empty standard input says so.
    let out = run(&["publish", "said", "--server", s]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("nothing was published"),
        "{}",
        text(&out.stderr)
    );

    // consume on a queue that does not exist says that subscribing created it.
    c.publish("jobs", "x").await.unwrap();
    let mut child = squall()
        .args(["consume", "jbos", "--server", s])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let note = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr).lines().next().map(|l| l.unwrap())
    });
    let note = tokio::time::timeout(WAIT, note).await;
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    let note = note
        .expect("a note on standard error")
        .unwrap()
        .unwrap_or_default();
    assert!(
        note.contains("queue jbos did not exist (queues that exist: jobs)"),
        "{note}"
    );
    assert!(note.contains("subscribing created it"), "{note}");
    assert_eq!(
        status.code(),
        Some(130),
        "an idle consume stops on Ctrl-C too"
    );

    for (args, says) in [
        (vec!["--nack"], "nacked: retried after the queue's backoff"),
        (
            vec!["--fail", "bad input"],
            "failed: moved to the dead set (reason: bad input)",
        ),
    ] {
        c.publish("said", "x").await.unwrap();
        let mut full = vec!["consume", "said", "--server", s, "--count", "1"];
        full.extend(args);
        let out = run(&full).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }

    let out = run(&["purge", "said", "--server", s, "--yes", "--state", "dead"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "purged 1 task from said");
}

/// The README's one-minute tour, run as written against a broker started with the
/// defaults a new user gets: every command exits 0, and the output lines the README
/// shows in its comments (`# task ...`, the schedule table's header) are what it prints.
#[test]
fn the_readme_tour_runs_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let tour = readme
        .split("## A one-minute tour")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the tour's sh block");
    assert!(
        tour.contains("alias squall="),
        "the tour defines `squall` first"
    );
    let mut script = String::from("set -eu\nsquall() { \"$SQUALL_BIN\" \"$@\"; }\n");
    let mut shown = Vec::new();
    for line in tour.lines() {
        let trimmed = line.trim_start();
        if let Some(out) = trimmed.strip_prefix("# ") {
            if out.starts_with("task ") || out.starts_with("SCHEDULE ") {
                shown.push(out.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        } else if !trimmed.is_empty() && !trimmed.starts_with("alias ") {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(shown.len() >= 3, "the tour shows output: {shown:?}");
    let (_dir, data) = common::temp_data_dir();
    let broker = common::ChildBroker::spawn(&data, &["--http", "off"]);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root)
        .env("SQUALL_BIN", env!("CARGO_BIN_EXE_squall"))
        .env("SQUALL_SERVER", broker.addr.to_string())
        .env_remove("SQUALL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run the tour");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "the tour failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    let printed: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for line in &shown {
        assert!(
            printed.contains(line),
            "the README shows {line:?}; the tour printed:\n{stdout}"
        );
    }
    // What `consume` did with each task goes to standard error.
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nacked: retried after"), "{stderr}");
    assert!(stderr.contains("failed: moved to the dead set"), "{stderr}");
    broker.terminate();
}
