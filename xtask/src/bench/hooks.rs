//! The scheduler hook alone, attached by the bench itself: the agent's own `sched_switch`
//! program, or the empty one (`ebpf/src/floor.rs`, in the agent's object but never loaded
//! by the agent) whose cost is what any scheduler hook costs on this machine, so the
//! agent's own work is what its program adds on top. One load of the object; either
//! program attached and detached at will.
use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::{
    programs::{tp_btf::BtfTracePointLinkId, BtfTracePoint},
    Btf, Ebpf, EbpfLoader,
};
use exitwatch_common::names;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Empty,
    Agent,
}

impl Hook {
    const ALL: [Hook; 2] = [Hook::Empty, Hook::Agent];

    fn program(self) -> &'static str {
        match self {
            Hook::Empty => names::PROG_EMPTY_SCHED_SWITCH,
            Hook::Agent => names::PROG_SCHED_SWITCH,
        }
    }
}

/// The loaded programs; dropping this detaches whatever is attached.
pub struct Hooks {
    ebpf: Ebpf,
    attached: Option<(Hook, BtfTracePointLinkId)>,
}

impl Hooks {
    pub fn load(root: &Path) -> Result<Hooks> {
        let object = root.join(crate::ebpf_fingerprint::OBJECT);
        // The object's task-local storage map has no aya wrapper; the programs use it.
        // Its globals keep their defaults: the wait histogram off, as in the agent's
        // default run.
        let mut ebpf = EbpfLoader::new()
            .allow_unsupported_maps()
            .load_file(&object)
            .with_context(|| format!("loading {}", object.display()))?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for hook in Hook::ALL {
            program(&mut ebpf, hook)?
                .load("sched_switch", &btf)
                .with_context(|| format!("loading {}", hook.program()))?;
        }
        Ok(Hooks {
            ebpf,
            attached: None,
        })
    }

    /// Attaches `hook` (none for `None`) in place of what was attached.
    pub fn attach(&mut self, hook: Option<Hook>) -> Result<()> {
        if let Some((previous, link)) = self.attached.take() {
            program(&mut self.ebpf, previous)?
                .detach(link)
                .with_context(|| format!("detaching {}", previous.program()))?;
        }
        if let Some(hook) = hook {
            let link = program(&mut self.ebpf, hook)?
                .attach()
                .with_context(|| format!("attaching {}", hook.program()))?;
            self.attached = Some((hook, link));
        }
        Ok(())
    }

    /// How often `hook`'s program ran so far, and for how long: zero unless the kernel's
    /// BPF stats are on.
    pub fn stats(&mut self, hook: Hook) -> Result<(u64, Duration)> {
        let info = program(&mut self.ebpf, hook)?
            .info()
            .with_context(|| format!("reading the stats of {}", hook.program()))?;
        Ok((info.run_count(), info.run_time()))
    }
}

fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut BtfTracePoint> {
    let name = hook.program();
    ebpf.program_mut(name)
        .with_context(|| format!("no {name} in the object"))?
        .try_into()
        .with_context(|| format!("{name} is no tp_btf program"))
}
