//! What a blocked event loop awaits. The coroutine an `asyncio` loop runs is suspended
//! while the loop waits in `select`: it is on no thread's stack. The loop's
//! `BaseEventLoop.run_until_complete` frame holds it in its local `future` (the
//! `_asyncio.Task` wrapping it); from the task's coroutine, what each coroutine awaits is
//! on the top of its suspended frame's value stack, a coroutine or another task. Each
//! object's type is checked by name before any field of it is trusted (3.11 and later).
use super::{
    frames::Reader,
    layout::{Frames, OB_SIZE, OB_TYPE},
    memory::int_at,
    objects,
};
use crate::stacks::model::Frame;

/// Where 3.11 to 3.13 keep what the walk reads in the C `TaskObj` (`task_coro`) and
/// `PyCoroObject` (`cr_frame_state`, and the embedded `_PyInterpreterFrame`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Awaits {
    pub task_coro: u64,
    pub frame_state: u64,
    pub frame: u64,
}

/// In a code object, `co_localsplusnames`; in an interpreter frame, `stacktop` (in
/// words from `localsplus`) and `localsplus`; in a tuple, its items (3.11 to 3.13).
const LOCALS_NAMES: u64 = 96;
const STACK_TOP: u64 = 64;
const LOCALS: u64 = 72;
const TUPLE_ITEMS: u64 = 24;
/// Local names compared at most, and coroutines followed from the loop's at most.
const MAX_LOCALS: u64 = 64;
const MAX_AWAITS: usize = 4;
/// The frame that holds the awaited task, and where.
const RUN_UNTIL_COMPLETE: &str = "BaseEventLoop.run_until_complete";
const BASE_EVENTS: &str = "asyncio/base_events.py";
/// What awaited frames' functions are prefixed with.
const AWAIT: &str = "await ";
/// `tp_name`s, with their terminating NUL.
const TASK_TYPE: &[u8] = b"_asyncio.Task\0";
const CORO_TYPE: &[u8] = b"coroutine\0";

/// Whether `frame` is the loop's `run_until_complete`, whose awaits [`awaited`] reads.
pub fn is_run_until_complete(frame: &Frame) -> bool {
    frame.function.as_deref() == Some(RUN_UNTIL_COMPLETE)
        && frame
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with(BASE_EVENTS))
}

/// The frames of what the `run_until_complete` frame at `address` awaits, innermost
/// first, each function named `await …`; empty when anything read is not as expected.
pub fn awaited(reader: &mut Reader, address: u64) -> Vec<Frame> {
    let layout = reader.layout();
    let (Some(awaits), Frames::Interpreter { code, .. }) = (&layout.awaits, layout.frames) else {
        return Vec::new();
    };
    let mut frames = Vec::new();
    let mut next = local(reader, address, code, "future");
    while let Some(object) = next.filter(|_| frames.len() < MAX_AWAITS) {
        let coro = if has_type(reader, object, TASK_TYPE) {
            reader
                .memory()
                .word(object.wrapping_add(awaits.task_coro))
                .ok()
        } else {
            Some(object)
        };
        let Some(coro) = coro.filter(|coro| has_type(reader, *coro, CORO_TYPE)) else {
            break;
        };
        // Only a frame that is not running, completed or cleared holds what it awaits.
        let state = reader
            .memory()
            .bytes(coro.wrapping_add(awaits.frame_state), 1);
        if !state.is_ok_and(|state| (state[0] as i8) < 0) {
            break;
        }
        let frame = coro.wrapping_add(awaits.frame);
        let Some(mut found) = reader.frame(frame).ok().and_then(|(found, _)| found) else {
            break;
        };
        found.function = found.function.map(|function| format!("{AWAIT}{function}"));
        frames.push(found);
        next = stack_top(reader, frame);
    }
    frames.reverse();
    frames
}

fn has_type(reader: &mut Reader, object: u64, name: &[u8]) -> bool {
    let memory = reader.memory();
    memory
        .word(object.wrapping_add(OB_TYPE))
        .is_ok_and(|class| objects::type_named(memory, class, name))
}

/// The local `name` of the interpreter frame at `frame`, whose code object is at
/// `code_at` in it.
fn local(reader: &mut Reader, frame: u64, code_at: u64, name: &str) -> Option<u64> {
    let layout = reader.layout();
    let memory = reader.memory();
    let code = memory.word(frame.wrapping_add(code_at)).ok()?;
    let names = memory.word(code.wrapping_add(LOCALS_NAMES)).ok()?;
    let count = memory
        .word(names.wrapping_add(OB_SIZE))
        .ok()?
        .min(MAX_LOCALS);
    let items = memory
        .bytes(names.wrapping_add(TUPLE_ITEMS), (count * 8) as usize)
        .ok()?;
    let index = (0..count).find(|at| {
        int_at::<8>(&items, at * 8)
            .is_some_and(|item| objects::is_string(memory, layout, item, name))
    })?;
    let value = memory.word(frame.wrapping_add(LOCALS + index * 8)).ok()?;
    (value != 0).then_some(value)
}

/// The top of the value stack of the suspended interpreter frame at `frame`: what it
/// awaits, when it awaits (the caller checks its type).
fn stack_top(reader: &mut Reader, frame: u64) -> Option<u64> {
    let memory = reader.memory();
    let bytes = memory.bytes(frame.wrapping_add(STACK_TOP), 4).ok()?;
    let top = u64::try_from(int_at::<4>(&bytes, 0)? as i32)
        .ok()?
        .checked_sub(1)?;
    memory
        .word(frame.wrapping_add(LOCALS).wrapping_add(top.checked_mul(8)?))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::super::{layout::TP_NAME, memory::Memory, objects::fake::Fake};
    use super::*;

    /// Interpreter objects of one version, laid out in this process's memory.
    struct Loop {
        fake: Fake,
        awaits: &'static Awaits,
        code_at: u64,
        owner: u64,
    }

    impl Loop {
        fn new(minor: u8) -> Self {
            let fake = Fake::new(minor);
            let Frames::Interpreter { code, owner, .. } = fake.layout.frames else {
                panic!("3.{minor} has interpreter frames");
            };
            let awaits = fake.layout.awaits.as_ref().expect("awaits from 3.11");
            Self {
                fake,
                awaits,
                code_at: code,
                owner,
            }
        }

        fn class(&mut self, name: &[u8]) -> u64 {
            let chars: Vec<_> = (0..)
                .zip(name)
                .map(|(at, c)| (at, 1, u64::from(*c)))
                .collect();
            let name = self.fake.object(name.len(), &chars);
            self.fake
                .object(TP_NAME as usize + 8, &[(TP_NAME, 8, name)])
        }

        /// A code object of `function` in `file` whose locals are `locals`.
        fn code(&mut self, function: &str, file: &str, locals: &[&str]) -> u64 {
            let class = self.class(b"code\0");
            let layout = self.fake.layout;
            let (function, file) = (self.fake.string(function), self.fake.string(file));
            let mut items = vec![(OB_SIZE, 8, locals.len() as u64)];
            for (at, local) in (0..).zip(locals) {
                items.push((TUPLE_ITEMS + at * 8, 8, self.fake.string(local)));
            }
            let names = self
                .fake
                .object(TUPLE_ITEMS as usize + 8 * locals.len(), &items);
            let qualname = layout.qualname.expect("qualified names from 3.11");
            self.fake.object(
                160,
                &[
                    (OB_TYPE, 8, class),
                    (qualname, 8, function),
                    (layout.filename, 8, file),
                    (layout.first_line, 4, 7),
                    (LOCALS_NAMES, 8, names),
                ],
            )
        }

        /// The fields of an interpreter frame of `code` at `at`, whose locals (then
        /// value stack) are `values`.
        fn frame_fields(&self, at: u64, code: u64, values: &[u64]) -> Vec<(u64, usize, u64)> {
            let mut fields = vec![
                (at + self.code_at, 8, code),
                (at + self.owner, 1, 0),
                (at + STACK_TOP, 4, values.len() as u64),
            ];
            fields.extend((0..).zip(values).map(|(i, v)| (at + LOCALS + i * 8, 8, *v)));
            fields
        }

        /// A suspended coroutine of `function` awaiting `awaits` (0: nothing).
        fn coroutine(&mut self, function: &str, awaits: u64) -> u64 {
            let class = self.class(CORO_TYPE);
            let code = self.code(function, "/usr/lib/python3/asyncio/base_events.py", &[]);
            let mut fields = vec![(OB_TYPE, 8, class), (self.awaits.frame_state, 1, 0xff)];
            fields.extend(self.frame_fields(self.awaits.frame, code, &[awaits]));
            self.fake.object(self.awaits.frame as usize + 128, &fields)
        }

        fn task(&mut self, class: &[u8], coro: u64) -> u64 {
            let class = self.class(class);
            let fields = [(OB_TYPE, 8, class), (self.awaits.task_coro, 8, coro)];
            self.fake
                .object(self.awaits.task_coro as usize + 8, &fields)
        }

        /// A `run_until_complete` frame whose local `future` is `future`.
        fn run_until_complete(&mut self, future: u64) -> u64 {
            let code = self.code(RUN_UNTIL_COMPLETE, BASE_EVENTS, &["self", "future"]);
            let fields = self.frame_fields(0, code, &[0, future]);
            self.fake.object(LOCALS as usize + 16, &fields)
        }

        fn awaited(&self, frame: u64) -> Vec<String> {
            let mut memory: Memory = self.fake.memory();
            let mut reader = Reader::new(&mut memory, self.fake.layout);
            awaited(&mut reader, frame)
                .into_iter()
                .map(|f| f.function.expect("a function"))
                .collect()
        }
    }

    #[test]
    fn the_task_the_loop_runs_and_what_it_awaits_are_awaited_frames() {
        for minor in [11, 12, 13] {
            let mut lp = Loop::new(minor);
            let inner = lp.coroutine("Inner.wait", 0);
            let task = lp.task(b"_asyncio.Task\0", inner);
            let outer = lp.coroutine("BaseEventLoop.shutdown_default_executor", task);
            let future = lp.task(b"_asyncio.Task\0", outer);
            let frame = lp.run_until_complete(future);
            assert_eq!(
                lp.awaited(frame),
                [
                    "await Inner.wait",
                    "await BaseEventLoop.shutdown_default_executor"
                ],
                "3.{minor}"
            );
        }
    }

    #[test]
    fn what_is_not_a_task_of_a_suspended_coroutine_gives_nothing() {
        let mut lp = Loop::new(12);
        let garbage = lp.fake.object(256, &[(OB_TYPE, 8, 0x10), (136, 8, 0x20)]);
        let list = lp.task(b"list\0", garbage);
        let task_of_garbage = lp.task(b"_asyncio.Task\0", garbage);
        let running = lp.coroutine("running", 0);
        lp.fake.set(running + lp.awaits.frame_state, 0);
        let task_of_running = lp.task(b"_asyncio.Task\0", running);
        let not_code = lp.coroutine("not_code", 0);
        lp.fake
            .set(not_code + lp.awaits.frame + lp.code_at, garbage);
        for future in [
            0,
            8,
            garbage,
            list,
            task_of_garbage,
            task_of_running,
            not_code,
        ] {
            let frame = lp.run_until_complete(future);
            assert!(lp.awaited(frame).is_empty(), "{future:#x}");
        }
        // Names that claim more than there are, and a frame that is not there.
        let frame = lp.run_until_complete(garbage);
        let code = lp.fake.memory().word(frame + lp.code_at).expect("the code");
        let names = lp
            .fake
            .memory()
            .word(code + LOCALS_NAMES)
            .expect("the names");
        lp.fake.set(names + OB_SIZE, 1 << 40);
        assert!(lp.awaited(frame).is_empty());
        assert!(lp.awaited(8).is_empty());
    }

    #[test]
    fn a_coroutine_awaiting_itself_is_followed_a_few_times() {
        let mut lp = Loop::new(13);
        let coro = lp.coroutine("again", 0);
        lp.fake.set(coro + lp.awaits.frame + LOCALS, coro);
        let frame = lp.run_until_complete(coro);
        assert_eq!(lp.awaited(frame), ["await again"; MAX_AWAITS]);
    }
}
