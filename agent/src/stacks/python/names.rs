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

#[cfg(test)]
mod tests {
    use super::super::objects::fake::Fake;
    use super::*;

    /// Two `pthread_t`s as glibc hands them out, the main thread's and another's.
    const MAIN: u64 = 0x7f12_3456_7b80;
    const WORKER: u64 = 0x7f12_2fff_f6c0;

    /// An interpreter whose `threading._active` holds `threads` (ident, `_name`; `None`
    /// for a `Thread` without one), with other modules and globals around them.
    fn interpreter(fake: &mut Fake, threads: &[(u64, Option<u64>)]) -> u64 {
        let target = fake.string("_target");
        let name_key = fake.string("_name");
        let active: Vec<(u64, u64)> = threads
            .iter()
            .map(|(ident, name)| {
                let digits = [
                    *ident as u32 & 0x3fff_ffff,
                    (*ident >> 30) as u32 & 0x3fff_ffff,
                ];
                let key = fake.int(&digits);
                let mut attributes = vec![(target, target)];
                attributes.extend(name.map(|name| (name_key, name)));
                (key, fake.instance(&attributes))
            })
            .collect();
        let active = fake.dict(&active);
        let (thread, active_key) = (fake.string("Thread"), fake.string("_active"));
        let globals = fake.dict(&[(thread, thread), (active_key, active)]);
        let module = fake.object(24, &[(MODULE_DICT, 8, globals)]);
        let (sys, threading) = (fake.string("sys"), fake.string("threading"));
        let modules = fake.dict(&[(sys, sys), (threading, module)]);
        let at = fake.layout.modules;
        fake.object(at as usize + 8, &[(at, 8, modules)])
    }

    #[test]
    fn names_are_read_as_each_version_keeps_them() {
        for minor in 7..=13 {
            let mut fake = Fake::new(minor);
            let (main, worker) = (fake.string("MainThread"), fake.string("stuck-worker"));
            let interpreter = interpreter(&mut fake, &[(MAIN, Some(main)), (WORKER, Some(worker))]);
            let mut memory = fake.memory();
            let names = thread_names(&mut memory, fake.layout, interpreter, &[WORKER, MAIN, 1]);
            let expected = BTreeMap::from([
                (MAIN, "MainThread".to_string()),
                (WORKER, "stuck-worker".to_string()),
            ]);
            assert_eq!(names, expected, "3.{minor}");
            // Only the threads asked about.
            let names = thread_names(&mut memory, fake.layout, interpreter, &[WORKER]);
            assert_eq!(names.into_keys().collect::<Vec<_>>(), [WORKER], "3.{minor}");
        }
    }

    #[test]
    fn what_cannot_be_read_has_no_name() {
        for minor in [10, 13] {
            let mut fake = Fake::new(minor);
            // A name that claims 2^40 characters is cut; a thread without `_name` has
            // none; nothing is read for no thread.
            let long = fake.string_of("A", 1 << 40);
            let interpreter = interpreter(&mut fake, &[(MAIN, Some(long)), (WORKER, None)]);
            let mut memory = fake.memory();
            let names = thread_names(&mut memory, fake.layout, interpreter, &[MAIN, WORKER]);
            let name = names.get(&MAIN).expect("the long name, cut");
            assert_eq!(name.chars().count() as u64, MAX_NAME_BYTES, "3.{minor}");
            assert!(!names.contains_key(&WORKER), "3.{minor}");
            assert!(thread_names(&mut memory, fake.layout, interpreter, &[]).is_empty());
            // An interpreter whose modules are nowhere, or not a dict.
            let nowhere = fake.object(fake.layout.modules as usize + 8, &[]);
            assert!(thread_names(&mut memory, fake.layout, nowhere, &[MAIN]).is_empty());
            let text = fake.string("threading");
            let at = fake.layout.modules;
            let not_a_dict = fake.object(at as usize + 8, &[(at, 8, text)]);
            assert!(thread_names(&mut memory, fake.layout, not_a_dict, &[MAIN]).is_empty());
        }
    }
}
