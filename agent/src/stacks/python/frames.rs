//! A thread's Python frames, innermost first: the chain from its thread state, each
//! frame's code object (names, file, line table) and where in it the thread is. Frames
//! and code objects are read as they are while other threads may run: a cycle, a
//! pointer to nothing, an object that is not code, all end the walk or skip the frame.
use std::collections::BTreeMap;

use super::{
    awaits,
    layout::{Frames, Layout, BYTES_DATA, OB_SIZE, OB_TYPE},
    lines,
    memory::{int_at, Memory, ReadError},
    objects,
};
use crate::stacks::{
    model::{Frame, FrameKind},
    unwind::MAX_FRAMES,
};

/// Names and file names read at most (in bytes of the string's own encoding).
const MAX_STRING_BYTES: u64 = 1024;
/// Line tables of larger functions are not read: their frames get the first line.
const MAX_LINE_TABLE_BYTES: u64 = 64 << 10;
/// Bytes of a code object read: up to its line table pointer in every version.
const CODE_HEAD_BYTES: usize = 144;
/// What a code object's type's `tp_name` points at.
const CODE_TYPE_NAME: &[u8] = b"code\0";
/// Frames the C stack owns (3.12 and 3.13): the interpreter's entry shims.
const OWNED_BY_CSTACK: u8 = 3;

/// One thread's Python frames, whether the walk reached the outermost one, and the
/// thread's name in `threading`, when it could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonStack {
    pub frames: Vec<Frame>,
    pub complete: bool,
    pub thread_name: Option<String>,
}

/// What a code object says about its frames.
#[derive(Clone)]
struct Code {
    function: Option<String>,
    file: Option<String>,
    first_line: i32,
    table: Option<Vec<u8>>,
}

/// Reads frames of the threads of one process, remembering code objects and which types
/// are code across threads (a recursive function is read once).
pub struct Reader<'m> {
    memory: &'m mut Memory,
    layout: &'static Layout,
    codes: BTreeMap<u64, Option<Code>>,
    code_types: BTreeMap<u64, bool>,
}

impl<'m> Reader<'m> {
    pub fn new(memory: &'m mut Memory, layout: &'static Layout) -> Self {
        Self {
            memory,
            layout,
            codes: BTreeMap::new(),
            code_types: BTreeMap::new(),
        }
    }

    pub fn memory(&mut self) -> &mut Memory {
        self.memory
    }

    pub fn layout(&self) -> &'static Layout {
        self.layout
    }

    /// The frames of the thread whose state is at `thread_state`.
    pub fn stack(&mut self, thread_state: u64) -> PythonStack {
        let mut stack = PythonStack::default();
        let Ok(mut frame) = self.memory.follow(thread_state, self.layout.current_frame) else {
            return stack;
        };
        let mut seen = Vec::new();
        while seen.len() < MAX_FRAMES {
            if frame == 0 {
                stack.complete = true;
                break;
            }
            if seen.contains(&frame) {
                break;
            }
            seen.push(frame);
            let Ok((found, previous)) = self.frame(frame) else {
                break;
            };
            if found.as_ref().is_some_and(awaits::is_run_until_complete) {
                let awaited = awaits::awaited(self, frame);
                stack.frames.extend(awaited);
            }
            stack.frames.extend(found);
            frame = previous;
        }
        stack
    }

    /// The frame at `address` (`None` for a shim or what is not code) and the next one
    /// out.
    pub fn frame(&mut self, address: u64) -> Result<(Option<Frame>, u64), ReadError> {
        // Up to the last field read: `f_lasti`, or the owner.
        let size = match self.layout.frames {
            Frames::Objects { lasti, .. } => lasti + 4,
            Frames::Interpreter { owner, .. } => owner + 1,
        };
        let bytes = self.memory.bytes(address, size as usize)?;
        let int = |at, size: usize| {
            let value = match size {
                1 => int_at::<1>(&bytes, at),
                4 => int_at::<4>(&bytes, at),
                _ => int_at::<8>(&bytes, at),
            };
            value.ok_or(ReadError::Fault(address))
        };
        let (code, previous, offset) = match self.layout.frames {
            Frames::Objects {
                back,
                code,
                lasti,
                lasti_in_units,
            } => {
                // -1 before the first instruction.
                let lasti = u64::try_from(int(lasti, 4)? as i32).ok();
                let offset = if lasti_in_units {
                    lasti.map(|units| units * 2)
                } else {
                    lasti
                };
                (int(code, 8)?, int(back, 8)?, offset)
            }
            Frames::Interpreter {
                code,
                previous,
                instruction,
                owner,
                code_start,
            } => {
                let (code, previous) = (int(code, 8)?, int(previous, 8)?);
                if int(owner, 1)? == u64::from(OWNED_BY_CSTACK) {
                    return Ok((None, previous));
                }
                let offset = int(instruction, 8)?.checked_sub(code.wrapping_add(code_start));
                (code, previous, offset)
            }
        };
        let frame = self.code(code).map(|code| Frame {
            kind: FrameKind::Python,
            line: match (&code.table, offset) {
                (Some(table), Some(offset)) => {
                    lines::line(self.layout.lines, table, code.first_line, offset)
                }
                _ => u32::try_from(code.first_line).ok(),
            },
            module: code.file.as_deref().map(basename),
            function: code.function,
            file: code.file,
            offset: offset.unwrap_or(0),
        });
        Ok((frame, previous))
    }

    /// The code object at `address`, read once; `None` if it is not one.
    fn code(&mut self, address: u64) -> Option<Code> {
        if let Some(code) = self.codes.get(&address) {
            return code.clone();
        }
        let code = self.read_code(address);
        self.codes.insert(address, code.clone());
        code
    }

    fn string(&mut self, address: u64) -> Option<String> {
        objects::string(self.memory, self.layout, address, MAX_STRING_BYTES)
    }

    fn read_code(&mut self, address: u64) -> Option<Code> {
        let head = self.memory.bytes(address, CODE_HEAD_BYTES).ok()?;
        let field = |at| int_at::<8>(&head, at);
        if !self.is_code_type(field(OB_TYPE)?) {
            return None;
        }
        let layout = self.layout;
        let name = field(layout.qualname.unwrap_or(layout.name))?;
        let first_line = int_at::<4>(&head, layout.first_line)? as i32;
        let table = field(layout.line_table)?;
        Some(Code {
            function: self.string(name),
            file: self.string(field(layout.filename)?),
            first_line,
            table: self.bytes_object(table),
        })
    }

    /// Whether the type object at `address` is `code` (by its `tp_name`).
    fn is_code_type(&mut self, address: u64) -> bool {
        if let Some(known) = self.code_types.get(&address) {
            return *known;
        }
        let is_code = objects::type_named(self.memory, address, CODE_TYPE_NAME);
        self.code_types.insert(address, is_code);
        is_code
    }

    /// A `bytes` object's contents, if at most [`MAX_LINE_TABLE_BYTES`].
    fn bytes_object(&mut self, address: u64) -> Option<Vec<u8>> {
        let size = self.memory.word(address.wrapping_add(OB_SIZE)).ok()?;
        if size > MAX_LINE_TABLE_BYTES {
            return None;
        }
        self.memory
            .bytes(address.wrapping_add(BYTES_DATA), size as usize)
            .ok()
    }
}

/// The last part of a path: what frames name as their module.
fn basename(file: &str) -> String {
    file.rsplit('/').next().unwrap_or(file).to_string()
}
