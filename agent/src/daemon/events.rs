//! Lifecycle events from the ring buffer: uprobe discovery on exec, exit-phase counts.
use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use exitwatch_common::{event_kind, exit_reason, Event};
use tokio::io::unix::AsyncFd;

use super::Shared;
use crate::probes::Streams;

/// How often the ring buffer is drained when the probes do not wake the agent: often
/// while events flow (an exec wants its uprobe discovery soon), rarely on a quiet host.
const DRAIN_BUSY: Duration = Duration::from_millis(20);
const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// When to look at a freshly exec'd process: right away for the executable, and again
/// once the dynamic loader has surely mapped its libraries (settled).
const DISCOVERY_DELAYS: [(Duration, bool); 2] = [
    (Duration::from_millis(20), false),
    (Duration::from_millis(300), true),
];

pub async fn run(shared: Arc<Shared>, streams: Streams) {
    let Streams { events, logger } = streams;
    tokio::spawn(forward_probe_logs(logger));
    // SAFETY: the ring buffer owns its fd and keeps it open until it is dropped, which
    // happens only with this AsyncFd.
    let mut events = match unsafe { AsyncFd::register(events) } {
        Ok(events) => events,
        Err(error) => {
            log::error!("cannot poll the event ring buffer: {error}; exec discovery is off");
            return;
        }
    };
    // The probes wake this loop only when the ring is a quarter full; otherwise it drains
    // on a short timer, which keeps the probes cheap on exec- and exit-heavy hosts.
    let mut pause = DRAIN_IDLE;
    loop {
        tokio::select! {
            ready = events.readable_mut() => match ready {
                Ok(mut ready) => {
                    drain(&shared, ready.get_inner_mut());
                    ready.clear_ready();
                    pause = DRAIN_BUSY;
                }
                Err(error) => {
                    log::error!("the event ring buffer failed ({error}); exec discovery is off");
                    return;
                }
            },
            _ = tokio::time::sleep(pause) => {
                let drained = drain(&shared, events.get_mut());
                pause = if drained > 0 { DRAIN_BUSY } else { DRAIN_IDLE };
            }
        }
    }
}

/// Handles every queued event; returns how many there were.
fn drain(shared: &Arc<Shared>, ring: &mut RingBuf<MapData>) -> usize {
    let mut drained = 0;
    while let Some(item) = ring.next() {
        drained += 1;
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole `Event`; the read tolerates misalignment.
        let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        handle(shared, &event);
    }
    drained
}

fn handle(shared: &Arc<Shared>, event: &Event) {
    match event.kind {
        event_kind::EXEC => {
            let pid = event.pid as i32;
            let shared = shared.clone();
            tokio::spawn(async move {
                for (delay, settled) in DISCOVERY_DELAYS {
                    tokio::time::sleep(delay).await;
                    let shared = shared.clone();
                    let discover = move || shared.probes().discover(pid, settled);
                    let _ = tokio::task::spawn_blocking(discover).await;
                }
            });
        }
        event_kind::EXIT_PHASE => {
            if let Some((_, name)) = exit_reason::ALL.iter().find(|(bit, _)| *bit == event.arg) {
                shared.metrics.exit_phase_entered(name);
                log::debug!("pid {} entered its exit phase ({name})", event.pid);
            }
        }
        _ => {}
    }
}

async fn forward_probe_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: as above, the logger owns its fd for as long as the AsyncFd lives.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let Ok(mut logger) = registered else {
        log::warn!("cannot poll the probes' log buffer; probe diagnostics are off");
        return;
    };
    loop {
        let Ok(mut ready) = logger.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
