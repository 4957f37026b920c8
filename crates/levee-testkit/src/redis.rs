//! A real `redis-server` for the fleet-wide rate limit tests: started on a
//! free loopback port with persistence off, killed by its PID, restartable
//! on the same port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RedisServer {
    addr: SocketAddr,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (the Debian package `redis-server`; `.ci/run`
    /// installs it) and waits until it answers PING.
    pub async fn start() -> anyhow::Result<RedisServer> {
        // Taking a free port from the OS and handing it over leaves a short
        // window for another process to take it; on loopback in a test run
        // that is good enough, and a clash fails loudly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = RedisServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL, by its PID) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies of SIGKILL all the same.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered, as a Redis stuck on a slow command or a full disk.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Undoes [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, which: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("redis-server is not running")?;
        let status = Command::new("kill")
            .arg(which)
            .arg(child.id().to_string())
            .status()
            .context("running kill (procps)")?;
        if !status.success() {
            bail!("kill {which} {} failed", child.id());
        }
        Ok(())
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (install the Debian package redis-server)")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                self.kill();
                bail!("redis-server on {} did not answer PING within 10 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn ping(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await??;
    s.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await??;
    if &buf != b"+PONG\r\n" {
        bail!("unexpected answer to PING: {:?}", String::from_utf8_lossy(&buf));
    }
    Ok(())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
