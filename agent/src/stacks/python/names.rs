//! Python threads' names (`threading.current_thread().name`, which CPython before 3.14
//! does not give the OS thread): the `threading` module in `sys.modules`, its `_active`
//! dict (thread ident, the thread's `pthread_t`, to its `Thread`), and each wanted
//! thread's `_name`. A program that never imported `threading`, or threads it did not
//! start, have none; what cannot be read is left out.
use std::collections::BTreeMap;

use super::{
    layout::{Layout, MODULE_DICT},
    memory::Memory,
    objects::{attribute, items, lookup, string, unsigned},
};

/// Modules in `sys.modules` and names in `threading`'s globals looked through at most
/// (a large program imports a few thousand modules; `threading` defines about 150 names).
const MAX_MODULES: usize = 8192;
const MAX_GLOBALS: usize = 1024;
/// Threads in `_active` and attributes of a `Thread` looked through at most.
const MAX_THREADS: usize = 1024;
const MAX_ATTRIBUTES: usize = 64;
/// A thread name's bytes read at most (in the string's own encoding).
const MAX_NAME_BYTES: u64 = 256;

/// The names of the threads whose `pthread_t` is in `wanted`, by `pthread_t`, in the
/// interpreter at `interpreter`.
pub fn thread_names(
    memory: &mut Memory,
    layout: &Layout,
    interpreter: u64,
    wanted: &[u64],
) -> BTreeMap<u64, String> {
    let mut names = BTreeMap::new();
    if wanted.is_empty() {
        return names;
    }
    let Some(active) = active_threads(memory, layout, interpreter) else {
        return names;
    };
    for (ident, thread) in items(memory, layout, active, MAX_THREADS) {
        let Some(ident) = unsigned(memory, layout, ident).filter(|i| wanted.contains(i)) else {
            continue;
        };
        let name = attribute(memory, layout, thread, "_name", MAX_ATTRIBUTES)
            .and_then(|name| string(memory, layout, name, MAX_NAME_BYTES));
        if let Some(name) = name {
            names.insert(ident, name);
        }
        if names.len() == wanted.len() {
            break;
        }
    }
    names
}

/// `threading._active`, if the program imported `threading`.
fn active_threads(memory: &mut Memory, layout: &Layout, interpreter: u64) -> Option<u64> {
    let modules = memory.word(interpreter.wrapping_add(layout.modules)).ok()?;
    let threading = lookup(memory, layout, modules, "threading", MAX_MODULES)?;
    let globals = memory.word(threading.wrapping_add(MODULE_DICT)).ok()?;
    lookup(memory, layout, globals, "_active", MAX_GLOBALS)
}
