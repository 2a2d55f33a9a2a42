//! The server process as `/proc` sees it: CPU time (user + system) and
//! resident memory, so a benchmark can report the server's CPU per message
//! and memory per connection.

use std::time::Duration;

use anyhow::Context as _;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

/// A server process to watch.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pid: u32,
}

/// One reading.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// User + system CPU time so far.
    pub cpu: Duration,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

impl Probe {
    /// Watch `pid`; fails if no such process can be read.
    pub fn new(pid: u32) -> anyhow::Result<Self> {
        let probe = Self { pid };
        probe.read()?;
        Ok(probe)
    }

    /// Read CPU time and RSS now.
    pub fn read(&self) -> anyhow::Result<Reading> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("reading /proc/{}/stat", self.pid))?;
        Ok(Reading {
            cpu: parse_cpu(&stat).context("unexpected /proc/PID/stat format")?,
            rss_bytes: rss_bytes(self.pid)?,
        })
    }
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss(&status).context("no VmRSS in /proc/PID/status")
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15; the
/// command name in field 2 may contain spaces, so count from its `)`).
fn parse_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14 -> index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (my server) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_cpu(stat), Some(Duration::from_millis(3250)));
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let status = "Name:\tsluice\nVmPeak:\t  9000 kB\nVmRSS:\t  5120 kB\nThreads:\t3\n";
        assert_eq!(parse_rss(status), Some(5120 * 1024));
    }

    #[test]
    fn this_process_can_be_probed() {
        let reading = Probe::new(std::process::id())
            .and_then(|p| p.read())
            .unwrap_or_default();
        assert!(reading.rss_bytes > 1 << 20, "{reading:?}");
    }
}
