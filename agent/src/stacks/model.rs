//! A captured stack as incidents carry it (JSON API, status page, `explain`).
use serde::{Deserialize, Serialize};

/// Innermost frame first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// False when the walk stopped before the outermost frame: a frame it could not
    /// unwind, the frame cap, or the time budget.
    pub complete: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Native,
    Python,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// Demangled; `None` where the module has no symbol for the address (stripped).
    pub function: Option<String>,
    /// Source file and line, from DWARF when the module has it.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The mapped file's name (as the process named it: display only); `None` for
    /// code outside any file (JIT, or a corrupt return address).
    pub module: Option<String>,
    /// The address as the module states it (what `addr2line -e MODULE` takes), or the
    /// absolute address when there is no module.
    pub offset: u64,
}

/// Runtime libraries between a program and the kernel: a frame in them is never the
/// place in the user's code that a summary names.
const RUNTIME_MODULES: [&str; 6] = [
    "libc.so",
    "libc-",
    "libpthread",
    "libpython",
    "libstdc++",
    "libgcc_s",
];

impl Frame {
    /// In a runtime library or an interpreter's own binary, not in the program's code.
    pub fn is_runtime(&self) -> bool {
        let Some(module) = &self.module else {
            return true;
        };
        self.kind == FrameKind::Native
            && (module.starts_with("python")
                || module.starts_with("ld-")
                || RUNTIME_MODULES.iter().any(|m| module.starts_with(m)))
    }

    /// The function, or `module+0x1189` without symbols.
    pub fn name(&self) -> String {
        match (&self.function, &self.module) {
            (Some(function), _) => function.clone(),
            (None, Some(module)) => format!("{module}+{:#x}", self.offset),
            (None, None) => format!("{:#x}", self.offset),
        }
    }

    /// ` at atexit_join.c:12` when the module has line information, else nothing.
    pub fn source(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!(" at {file}:{line}"),
            (Some(file), None) => format!(" at {file}"),
            _ => String::new(),
        }
    }
}

/// `join_worker at atexit_join.c:31 (atexit_join+0x1189)`: the name, where it is in the
/// source, and where in the module.
impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name(), self.source())?;
        match (&self.function, &self.module) {
            (Some(_), Some(module)) => write!(f, " ({module}+{:#x})", self.offset),
            _ => Ok(()),
        }
    }
}

impl Stack {
    /// The innermost frame in the program's own code.
    pub fn user_frame(&self) -> Option<&Frame> {
        self.frames.iter().find(|frame| !frame.is_runtime())
    }

    /// Whether the thread runs inside `exit()` (an `atexit` handler or a static
    /// destructor), and then the innermost frame below `exit` that is a C++ destructor.
    pub fn under_exit(&self) -> Option<Option<&Frame>> {
        let exit = self
            .frames
            .iter()
            .position(|f| matches!(f.function.as_deref(), Some("exit" | "__run_exit_handlers")))?;
        Some(self.frames[..exit].iter().find(|f| {
            f.function
                .as_deref()
                .is_some_and(|name| name.contains("::~"))
        }))
    }
}
