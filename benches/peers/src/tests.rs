//! Tests against the real peers: `redis-server` and `beanstalkd` (Debian packages, which
//! `.ci/run` installs), each started here on 127.0.0.1 with a temporary directory and
//! killed at the end. They check that each client pipelines its acknowledgements with
//! the next takes, and that a whole run delivers every message once and leaves nothing
//! behind. No speed is asserted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use squall_loadgen::{Publisher, Run};

use super::{beanstalkd, drive, redis_list, Args};

/// Whether the server at `addr` answers `probe` with a line starting with `answer`.
fn answers(addr: &str, probe: &[u8], answer: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    if s.local_addr().ok() == s.peer_addr().ok() {
        return false; // connected to itself: nobody listens there yet
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(probe).is_err() {
        return false;
    }
    let mut line = Vec::new();
    BufReader::new(s).read_until(b'\n', &mut line).is_ok() && line.starts_with(answer)
}

/// A peer broker process on 127.0.0.1, killed on drop.
struct Peer {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn redis() -> Peer {
        Peer::start("redis-server", b"PING\r\n", b"+PONG", |port, dir| {
            let mut c = Command::new("redis-server");
            c.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
            .arg(dir);
            c
        })
    }

    fn beanstalkd() -> Peer {
        Peer::start("beanstalkd", b"stats\r\n", b"OK ", |port, dir| {
            let mut c = Command::new("beanstalkd");
            c.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-b"])
                .arg(dir);
            c
        })
    }

    /// Starts `program` and waits until it answers `probe` with a line starting with
    /// `answer`: a TCP connect alone can succeed before it serves (or, to a port with
    /// no listener yet, connect a socket to itself), and the test then meets a reset.
    fn start(
        program: &str,
        probe: &[u8],
        answer: &[u8],
        command: impl Fn(u16, &std::path::Path) -> Command,
    ) -> Peer {
        let dir = tempfile::tempdir().expect("temporary directory");
        // A port the kernel just handed out and released: free unless raced.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = command(port, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}): install the Debian package (.ci/run does)")
            });
        let addr = format!("127.0.0.1:{port}");
        let mut peer = Peer {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers(&peer.addr, probe, answer) {
            if let Ok(Some(status)) = peer.child.try_wait() {
                panic!("{program} exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{program} did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        peer
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(target: &str, addr: &str, extra: &[&str]) -> Args {
    let base = [
        "squall-peers",
        "--target",
        target,
        "--server",
        addr,
        "--json",
    ];
    Args::parse_from(base.iter().chain(extra))
}

async fn redis_conn(peer: &Peer) -> redis::aio::MultiplexedConnection {
    redis_list::client(&peer.addr)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn llen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn redis_acks_ride_in_the_same_pipeline_as_the_next_takes() {
    let peer = Peer::redis();
    let mut conn = redis_conn(&peer).await;
    let (q, processing) = ("jobs", redis_list::processing_list("jobs", 0));
    for i in 0..10u8 {
        let _: i64 = redis::cmd("LPUSH")
            .arg(q)
            .arg(&[i][..])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let first = redis_list::ack_and_take(&mut conn, q, &processing, &[], 4)
        .await
        .unwrap();
    assert_eq!(
        first,
        vec![vec![0], vec![1], vec![2], vec![3]],
        "oldest first"
    );
    assert_eq!(llen(&mut conn, &processing).await, 4);

    // One call: the first batch's acks and the second batch's takes.
    let second = redis_list::ack_and_take(&mut conn, q, &processing, &first, 4)
        .await
        .unwrap();
    assert_eq!(second, vec![vec![4], vec![5], vec![6], vec![7]]);
    assert_eq!(
        llen(&mut conn, &processing).await,
        4,
        "the acked batch left the processing list in the same round trip"
    );
    let last = redis_list::ack_and_take(&mut conn, q, &processing, &second, 4)
        .await
        .unwrap();
    assert_eq!(last, vec![vec![8], vec![9]], "the queue ran dry");
    redis_list::ack_and_take(&mut conn, q, &processing, &last, 0)
        .await
        .unwrap();
    assert_eq!(llen(&mut conn, &processing).await, 0);
    assert_eq!(llen(&mut conn, q).await, 0);

    // An ack of a message that is not being processed is an error, not a silent no-op.
    let err = redis_list::ack_and_take(&mut conn, q, &processing, &[vec![42]], 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was not in"), "{err}");
}

#[tokio::test]
async fn a_redis_run_delivers_every_message_once_and_leaves_no_list_behind() {
    let peer = Peer::redis();
    let a = args(
        "redis",
        &peer.addr,
        &["--messages", "3000", "--producers", "2", "--consumers", "2"],
    );
    let a = Args {
        broker_pid: Some(peer.child.id()),
        ..a
    };
    let o = drive(&a).await.unwrap();
    assert_eq!((o.confirmed, o.delivered), (3000, 3000));
    assert_eq!((o.lost, o.duplicates), (0, 0));
    assert_eq!(o.end_to_end.len(), 3000);
    let mut conn = redis_conn(&peer).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "every list drained and acked: {keys:?}");
}

/// The YAML that a beanstalkd `stats` or `stats-tube` command answers.
fn stats(addr: &str, command: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let mut rd = BufReader::new(s);
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    let len: usize = line
        .trim_end()
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("{command} answered {line:?}"))
        .parse()
        .unwrap();
    let mut yaml = vec![0; len + 2];
    rd.read_exact(&mut yaml).unwrap();
    String::from_utf8(yaml).unwrap()
}

/// One numeric field of a `stats` answer.
fn field(yaml: &str, name: &str) -> u64 {
    yaml.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in {yaml}"))
}

/// A tube's count of ready and of reserved jobs.
fn tube_counts(addr: &str, tube: &str) -> (u64, u64) {
    let yaml = stats(addr, &format!("stats-tube {tube}"));
    (
        field(&yaml, "current-jobs-ready"),
        field(&yaml, "current-jobs-reserved"),
    )
}

#[tokio::test]
async fn beanstalkd_deletes_ride_in_the_same_write_as_the_next_reserves() {
    let peer = Peer::beanstalkd();
    let a = args("beanstalkd", &peer.addr, &["--prefetch", "4"]);
    let run = Run::new(&a.load).unwrap();
    let tube = run.queue(0).to_owned();
    let producer = beanstalkd::Producer::connect(&peer.addr, &tube)
        .await
        .unwrap();
    let jobs: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i])).collect();
    producer.publish(jobs).await.unwrap();
    producer.close().await;
    assert_eq!(tube_counts(&peer.addr, &tube), (10, 0));

    let mut worker = beanstalkd::Worker::connect(&peer.addr, run.consumer(0))
        .await
        .unwrap();
    let ids = |jobs: &[(u64, Vec<u8>)]| jobs.iter().map(|j| j.0).collect::<Vec<_>>();
    let first = worker.delete_and_reserve(&[], 4, 0).await.unwrap();
    let bodies: Vec<Vec<u8>> = first.iter().map(|j| j.1.clone()).collect();
    assert_eq!(
        bodies,
        vec![vec![0], vec![1], vec![2], vec![3]],
        "oldest first"
    );
    assert_eq!(tube_counts(&peer.addr, &tube), (6, 4));

    // One write: the first batch's deletes and the second batch's reserves.
    let second = worker.delete_and_reserve(&ids(&first), 4, 0).await.unwrap();
    assert_eq!(second.len(), 4);
    assert_eq!(
        tube_counts(&peer.addr, &tube),
        (2, 4),
        "the deleted batch is gone, the next one reserved"
    );
    let last = worker
        .delete_and_reserve(&ids(&second), 4, 0)
        .await
        .unwrap();
    assert_eq!(last.len(), 2, "the tube ran dry");
    worker.delete_and_reserve(&ids(&last), 0, 0).await.unwrap();
    assert_eq!(tube_counts(&peer.addr, &tube), (0, 0));
}

#[tokio::test]
async fn a_beanstalkd_run_delivers_every_message_once_and_leaves_no_job_behind() {
    let peer = Peer::beanstalkd();
    let a = args(
        "beanstalkd",
        &peer.addr,
        &["--messages", "2000", "--producers", "2", "--consumers", "2"],
    );
    let o = drive(&a).await.unwrap();
    assert_eq!((o.confirmed, o.delivered), (2000, 2000));
    assert_eq!((o.lost, o.duplicates), (0, 0));
    let yaml = stats(&peer.addr, "stats");
    assert_eq!(field(&yaml, "total-jobs"), 2000);
    assert_eq!(field(&yaml, "current-jobs-ready"), 0, "{yaml}");
    assert_eq!(field(&yaml, "current-jobs-reserved"), 0, "{yaml}");
}
