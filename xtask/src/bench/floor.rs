//! The floor: an empty `sched_switch` program (`ebpf/src/floor.rs`, in the agent's own
//! object but never loaded by it), attached by the bench itself. What it costs is what any
//! scheduler hook costs on this machine, so the agent's own work is what it adds on top.
use std::path::Path;

use anyhow::{Context, Result};
use aya::{programs::BtfTracePoint, Btf, Ebpf, EbpfLoader};
use exitwatch_common::names;

/// The attached program; dropping it detaches it.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    pub fn attach(root: &Path) -> Result<Floor> {
        let object = root.join(crate::ebpf_fingerprint::OBJECT);
        // The object's task-local storage map has no aya wrapper; unused here anyway.
        let mut ebpf = EbpfLoader::new()
            .allow_unsupported_maps()
            .load_file(&object)
            .with_context(|| format!("loading {}", object.display()))?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let program: &mut BtfTracePoint = ebpf
            .program_mut(names::PROG_EMPTY_SCHED_SWITCH)
            .with_context(|| format!("no {} in the object", names::PROG_EMPTY_SCHED_SWITCH))?
            .try_into()
            .context("the floor program is no tp_btf program")?;
        program
            .load("sched_switch", &btf)
            .context("loading the empty sched_switch program")?;
        program
            .attach()
            .context("attaching the empty sched_switch program")?;
        Ok(Floor { _ebpf: ebpf })
    }
}
