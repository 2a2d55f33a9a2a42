//! A child process that serves on a TCP port (a nats-server, a `sluice
//! serve` node of a dev fleet): started with its output in a log file (or
//! nowhere), ready once its port accepts connections, reported with the end
//! of its log when it exits first, stopped with SIGTERM and a grace time,
//! killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Lines of its log an early exit reports.
const LOG_TAIL_LINES: usize = 15;

/// A free TCP port on `ip` (free now: another process may take it before
/// the child binds it, so whoever starts one is ready to try again).
pub fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
}

/// The first of `n` consecutive free ports on `ip` (for a fleet whose nodes
/// listen on consecutive ports).
pub fn free_port_run(ip: std::net::IpAddr, n: u16) -> anyhow::Result<u16> {
    loop {
        let base = free_port(ip)?;
        if base > u16::MAX - n {
            continue;
        }
        if (1..n).all(|i| std::net::TcpListener::bind(SocketAddr::new(ip, base + i)).is_ok()) {
            return Ok(base);
        }
    }
}

/// A running child that listens on `addr`.
pub struct ListeningChild {
    child: Child,
    addr: SocketAddr,
}

impl ListeningChild {
    /// Start `program` with `args` (named `what` in errors), its stdout and
    /// stderr into `log` (None: discarded), and wait up to `patience` for
    /// `addr` to accept a connection. A child that exits first, or does not
    /// listen in time, is an error that says so (with the end of its log).
    pub fn start(
        what: &str,
        program: &Path,
        args: &[String],
        log: Option<&Path>,
        addr: SocketAddr,
        patience: Duration,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        match log {
            Some(log) => {
                let file = std::fs::File::create(log)
                    .with_context(|| format!("creating {}", log.display()))?;
                command.stdout(file.try_clone()?).stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut started = Self { child, addr };
        started.wait_listening(what, log, patience)?;
        Ok(started)
    }

    fn wait_listening(
        &mut self,
        what: &str,
        log: Option<&Path>,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        let addr = self.addr;
        let see = log.map_or_else(String::new, |l| format!("; see {}", l.display()));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                let tail = log.map_or_else(String::new, |l| {
                    let text = std::fs::read_to_string(l).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(LOG_TAIL_LINES).collect();
                    format!(
                        "; the end of {}:\n{}",
                        l.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                });
                bail!("{what} exited ({status}) before listening on {addr}{tail}");
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{what} did not listen on {addr} within {patience:?}{see}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (a Sluice node drains), then SIGKILL if it has not exited
    /// within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ListeningChild {
    fn drop(&mut self) {
        self.kill();
    }
}
