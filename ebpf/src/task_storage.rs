//! Task-local storage, which aya-ebpf 0.2 does not wrap: a BTF-defined map laid out the
//! way the kernel's loader (and aya's) expects in `.maps`.
use aya_ebpf::{
    bindings::{
        bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, task_struct, BPF_F_NO_PREALLOC,
        BPF_LOCAL_STORAGE_GET_F_CREATE,
    },
    helpers::generated::bpf_task_storage_get,
};

#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads as BTF; never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    // A pointer, not `&mut T`, as aya's own storage maps return: the value is shared with
    // every other program that runs for the same task, so exclusivity is the caller's
    // claim to make.
    fn lookup(&self, task: *mut task_struct, flags: u64) -> Option<*mut T> {
        let map = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: `task` is a trusted task pointer from the program's context and `map`
        // is this map's own address, which the loader relocates to its fd.
        let value = unsafe { bpf_task_storage_get(map, task, core::ptr::null_mut(), flags) };
        let value = value.cast::<T>();
        (!value.is_null()).then_some(value)
    }

    /// This task's value, if it has one; valid for the program's run. Tasks without any
    /// local storage cost a NULL check.
    pub fn get_ptr_mut(&self, task: *mut task_struct) -> Option<*mut T> {
        self.lookup(task, 0)
    }

    /// This task's value, created zeroed if absent; valid for the program's run.
    pub fn get_or_create_ptr_mut(&self, task: *mut task_struct) -> Option<*mut T> {
        self.lookup(task, u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE))
    }
}
