//! A slow link without `tc netem`: packets an NFQUEUE rule hands over are
//! held for the delay and then accepted, and a share of them dropped. Some
//! kernels (this project's CI machines among them) are built without
//! `sch_netem`; NFQUEUE is common. A thread enters the member's network
//! namespace (a queue belongs to the namespace its socket was opened in)
//! and serves the queue until the line is dropped; the rule uses
//! `--queue-bypass`, so packets flow unhindered whenever no line serves.

use std::collections::VecDeque;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::rng::Rng;

/// Packets the kernel queues before it lets them through unheld.
const QUEUE_MAX_LEN: u32 = 16_384;

/// A running delay line; stops (releasing every held packet) when dropped.
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayLine {
    /// Serve NFQUEUE `queue` in namespace `ns`: hold each packet
    /// `delay_ms`, drop `loss_percent` of them.
    pub fn start(ns: &str, queue: u16, delay_ms: u64, loss_percent: u32) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("delay-line-{ns}"))
            .spawn(move || {
                let opened = (|| -> anyhow::Result<nfq::Queue> {
                    let file =
                        std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .context("entering the namespace")?;
                    let mut q = nfq::Queue::open().context("opening an NFQUEUE socket")?;
                    q.bind(queue).context("binding the queue")?;
                    q.set_fail_open(queue, true)?;
                    q.set_queue_max_len(queue, QUEUE_MAX_LEN)?;
                    q.set_nonblocking(true);
                    Ok(q)
                })();
                match opened {
                    Ok(q) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(
                            q,
                            queue,
                            &flag,
                            Duration::from_millis(delay_ms),
                            loss_percent,
                        );
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        ready_rx
            .recv()
            .context("the delay line's thread ended before starting")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(mut q: nfq::Queue, queue: u16, stop: &AtomicBool, delay: Duration, loss_percent: u32) {
    let mut rng = Rng::new(u64::from(queue) ^ 0x5eed);
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        match q.recv() {
            Ok(mut msg) => {
                idle = false;
                if rng.range(0, 99) < u64::from(loss_percent) {
                    msg.set_verdict(nfq::Verdict::Drop);
                    let _ = q.verdict(msg);
                } else {
                    held.push_back((Instant::now() + delay, msg));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
        while held.front().is_some_and(|(due, _)| *due <= Instant::now()) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(nfq::Verdict::Accept);
                let _ = q.verdict(msg);
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    for (_, mut msg) in held {
        msg.set_verdict(nfq::Verdict::Accept);
        let _ = q.verdict(msg);
    }
    let _ = q.unbind(queue);
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
