//! The agent's kernel programs without the agent, attached by the bench itself: its
//! `sched_switch` program and the two that every thread's life runs (`task_newtask`,
//! `sched_process_exit`), or the empty `sched_switch` program (`ebpf/src/floor.rs`, in the
//! agent's object but never loaded by the agent) whose cost is what any scheduler hook
//! costs on this machine, so the agent's own work is what its programs add on top. One
//! load of the object; either set attached and detached at will.
use std::{fs, path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::{
    programs::{
        tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId, BtfTracePoint, Program,
        TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use exitwatch_common::{
    names,
    tracefs_format::{self, GlobalsError},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Empty,
    Agent,
}

/// Where a program attaches.
#[derive(Clone, Copy)]
enum Site {
    /// A `tp_btf` program on this tracepoint.
    Btf(&'static str),
    /// A classic tracepoint: (category, name).
    Classic(&'static str, &'static str),
}

impl Hook {
    const ALL: [Hook; 2] = [Hook::Empty, Hook::Agent];

    /// (program, where it attaches).
    fn programs(self) -> &'static [(&'static str, Site)] {
        match self {
            Hook::Empty => &[(names::PROG_EMPTY_SCHED_SWITCH, Site::Btf("sched_switch"))],
            Hook::Agent => &[
                (names::PROG_SCHED_SWITCH, Site::Btf("sched_switch")),
                (
                    names::PROG_TASK_NEWTASK,
                    Site::Classic("task", "task_newtask"),
                ),
                (names::PROG_PROCESS_EXIT, Site::Btf("sched_process_exit")),
            ],
        }
    }
}

enum Link {
    Btf(&'static str, BtfTracePointLinkId),
    Classic(&'static str, TracePointLinkId),
}

/// The loaded programs; dropping this detaches whatever is attached.
pub struct Hooks {
    ebpf: Ebpf,
    attached: Vec<Link>,
}

impl Hooks {
    pub fn load(root: &Path) -> Result<Hooks> {
        let object = root.join(crate::ebpf_fingerprint::OBJECT);
        let tracefs = tracefs_format::MOUNTS
            .iter()
            .map(Path::new)
            .find(|mount| mount.join("events").is_dir())
            .context("tracefs is not mounted")?;
        let format = |category: &str, tracepoint: &str| {
            let path = tracefs
                .join("events")
                .join(category)
                .join(tracepoint)
                .join("format");
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        // As the agent sets them: this kernel's record layouts; the other globals keep
        // their defaults (the wait histogram off, as in the agent's default run).
        let globals = tracefs_format::kernel_globals(|category, tracepoint, field| {
            Ok::<_, anyhow::Error>(tracefs_format::field_offset(
                &format(category, tracepoint)?,
                field,
            ))
        })
        .map_err(|error| match error {
            GlobalsError::Read(error) => error,
            GlobalsError::MissingField {
                category,
                tracepoint,
                field,
            } => anyhow::anyhow!("{category}/{tracepoint} has no field {field}"),
        })?;
        let mut loader = EbpfLoader::new();
        // The object's task-local storage map has no aya wrapper; the programs use it.
        loader.allow_unsupported_maps();
        for (global, value) in &globals {
            loader.override_global(global, value, true);
        }
        let mut ebpf = loader
            .load_file(&object)
            .with_context(|| format!("loading {}", object.display()))?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for hook in Hook::ALL {
            for &(name, site) in hook.programs() {
                match site {
                    Site::Btf(tracepoint) => btf_program(&mut ebpf, name)?.load(tracepoint, &btf),
                    Site::Classic(..) => classic_program(&mut ebpf, name)?.load(),
                }
                .with_context(|| format!("loading {name}"))?;
            }
        }
        Ok(Hooks {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Attaches `hook`'s programs (none for `None`) in place of what was attached.
    pub fn attach(&mut self, hook: Option<Hook>) -> Result<()> {
        for link in std::mem::take(&mut self.attached) {
            match link {
                Link::Btf(name, link) => btf_program(&mut self.ebpf, name)?
                    .detach(link)
                    .with_context(|| format!("detaching {name}"))?,
                Link::Classic(name, link) => classic_program(&mut self.ebpf, name)?
                    .detach(link)
                    .with_context(|| format!("detaching {name}"))?,
            }
        }
        let Some(hook) = hook else {
            return Ok(());
        };
        for &(name, site) in hook.programs() {
            let link = match site {
                Site::Btf(_) => btf_program(&mut self.ebpf, name)?
                    .attach()
                    .map(|link| Link::Btf(name, link)),
                Site::Classic(category, tracepoint) => classic_program(&mut self.ebpf, name)?
                    .attach(category, tracepoint)
                    .map(|link| Link::Classic(name, link)),
            }
            .with_context(|| format!("attaching {name}"))?;
            self.attached.push(link);
        }
        Ok(())
    }

    /// How often `hook`'s programs ran so far, and for how long, summed: zero unless the
    /// kernel's BPF stats are on.
    pub fn stats(&mut self, hook: Hook) -> Result<(u64, Duration)> {
        let mut total = (0, Duration::ZERO);
        for &(name, _) in hook.programs() {
            let info = program(&mut self.ebpf, name)?
                .info()
                .with_context(|| format!("reading the stats of {name}"))?;
            total.0 += info.run_count();
            total.1 += info.run_time();
        }
        Ok(total)
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("no {name} in the object"))
}

fn btf_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut BtfTracePoint> {
    program(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} is no tp_btf program"))
}

fn classic_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut TracePoint> {
    program(ebpf, name)?
        .try_into()
        .with_context(|| format!("{name} is no classic tracepoint program"))
}
