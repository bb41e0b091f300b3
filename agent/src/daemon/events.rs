//! Lifecycle events from the ring buffer: uprobe discovery on exec, exit-phase counts.
use std::{
    collections::BTreeSet,
    sync::{
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use exitwatch_common::{event_kind, exit_reason, Event};
use tokio::io::unix::AsyncFd;

use super::Shared;
use crate::pid::Pid;
use crate::probes::{Streams, UprobeStats};

/// How often the ring buffer is drained when the probes do not wake the agent: often
/// while events flow (an exec wants its uprobe discovery soon), rarely on a quiet host.
const DRAIN_BUSY: Duration = Duration::from_millis(20);
const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// Exec'd pids on their way to uprobe discovery, which schedules its own looks at them;
/// beyond this, exec events are dropped (and counted) rather than queued without bound.
const DISCOVERY_QUEUE: usize = 1024;

/// Where exec'd pids go for uprobe discovery, which runs on its own thread.
struct Discovery {
    pids: SyncSender<Pid>,
    stats: Arc<UprobeStats>,
}

pub async fn run(shared: Arc<Shared>, streams: Streams) {
    let Streams {
        events,
        logger,
        uprobes,
    } = streams;
    tokio::spawn(forward_probe_logs(logger));
    let (pids, queue) = sync_channel(DISCOVERY_QUEUE);
    let discovery = Discovery {
        pids,
        stats: uprobes.stats(),
    };
    let started = std::thread::Builder::new()
        .name("exitwatch-uprobes".into())
        .spawn(move || uprobes.run(queue));
    if let Err(error) = started {
        log::error!(
            "cannot start uprobe discovery: {error}; only installed interpreters are probed"
        );
    }
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
                    drain(&shared, &discovery, ready.get_inner_mut());
                    ready.clear_ready();
                    pause = DRAIN_BUSY;
                }
                Err(error) => {
                    log::error!("the event ring buffer failed ({error}); exec discovery is off");
                    return;
                }
            },
            _ = tokio::time::sleep(pause) => {
                let drained = drain(&shared, &discovery, events.get_mut());
                pause = if drained > 0 { DRAIN_BUSY } else { DRAIN_IDLE };
            }
        }
    }
}

/// Handles every queued event; returns how many there were.
fn drain(shared: &Arc<Shared>, discovery: &Discovery, ring: &mut RingBuf<MapData>) -> usize {
    let mut drained = 0;
    // Processes that exec'd in this batch and are still alive at its end. Most processes
    // of an exec-heavy host (`true`, `cc` wrappers, shell pipelines) exit within one
    // batch: they get no uprobe discovery at all, since nothing is left to look at.
    let mut execs = BTreeSet::new();
    while let Some(item) = ring.next() {
        drained += 1;
        if item.len() < std::mem::size_of::<Event>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole `Event`; the read tolerates misalignment.
        let event: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        handle(shared, &mut execs, &event);
    }
    // No task or timer per exec: discovery queues its looks itself.
    for pid in execs {
        if let Err(TrySendError::Full(_)) = discovery.pids.try_send(pid) {
            discovery.stats.drop_one();
        }
    }
    drained
}

fn handle(shared: &Arc<Shared>, execs: &mut BTreeSet<Pid>, event: &Event) {
    match event.kind {
        event_kind::EXEC => {
            // An id the kernel cannot have handed out names no process to look at.
            let Ok(pid) = Pid::try_from(event.pid) else {
                return;
            };
            shared.lifecycle().changed(pid);
            execs.insert(pid);
        }
        event_kind::EXIT => {
            if let Ok(pid) = Pid::try_from(event.pid) {
                shared.lifecycle().changed(pid);
                shared.zombies().exited(pid, event.ts_ns);
                execs.remove(&pid);
            }
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
