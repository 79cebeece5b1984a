//! The broker a `squall bench --spawn` run starts for itself: this same binary, `serve`
//! on 127.0.0.1 port 0 with a temporary data directory, stopped with SIGTERM at the end.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) struct SpawnedBroker {
    pub(crate) addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SpawnedBroker {
    pub(crate) async fn start(fsync: &str) -> anyhow::Result<SpawnedBroker> {
        let dir = tempfile::tempdir().context("create a temporary data directory")?;
        let exe = std::env::current_exe().context("find the squall binary")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--http", "off", "--fsync", fsync])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the broker")?;
        let stderr = child.stderr.take().context("broker stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    return rest.split_whitespace().next().map(str::to_owned);
                }
            }
            None
        })
        .await
        .context("the broker did not start within 30 s")?
        .context("the broker exited before listening")?;
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(SpawnedBroker {
            addr: addr.parse().context("broker address")?,
            child,
            _dir: dir,
        })
    }

    /// User + system CPU time the broker process has used so far.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        squall_loadgen::cpu_time(self.child.id()?)
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
