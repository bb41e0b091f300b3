//! Task-local storage, which aya-ebpf 0.2 does not wrap: a BTF-defined map laid out the
//! way the kernel's loader (and aya's) expects in `.maps`.
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, task_struct, BPF_F_NO_PREALLOC},
    helpers::generated::bpf_task_storage_get,
};

const BPF_LOCAL_STORAGE_GET_F_CREATE: u64 = 1;

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

    fn get_ptr(&self, task: *mut task_struct, flags: u64) -> Option<&mut T> {
        let map = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: `task` is a trusted task pointer from the program's context; the helper
        // returns NULL or a pointer to this task's value, valid for the program's run.
        unsafe { bpf_task_storage_get(map, task, core::ptr::null_mut(), flags).cast::<T>().as_mut() }
    }

    /// This task's value, if it has one. Tasks without any local storage cost a NULL check.
    pub fn get(&self, task: *mut task_struct) -> Option<&mut T> {
        self.get_ptr(task, 0)
    }

    /// This task's value, created zeroed if absent.
    pub fn get_or_create(&self, task: *mut task_struct) -> Option<&mut T> {
        self.get_ptr(task, BPF_LOCAL_STORAGE_GET_F_CREATE)
    }
}
