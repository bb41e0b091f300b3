//! A captured stack as incidents carry it (JSON API, status page, `explain`).
use serde::{Deserialize, Serialize};

/// Innermost frame first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// False when the walk stopped before the outermost frame: a frame it could not
    /// unwind, the frame cap, or the time budget.
    pub complete: bool,
    /// The thread's name in Python's `threading`, when it runs CPython and the name could
    /// be read (incidents show it with the thread, not with its frames).
    #[serde(skip)]
    pub python_thread: Option<String>,
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
    /// In a runtime library, an interpreter's own binary, or the Python standard library,
    /// not in the program's code.
    pub fn is_runtime(&self) -> bool {
        match self.kind {
            FrameKind::Native => self.module.as_deref().is_none_or(|module| {
                module.starts_with("python")
                    || module.starts_with("ld-")
                    || RUNTIME_MODULES.iter().any(|m| module.starts_with(m))
            }),
            FrameKind::Python => self.file.as_deref().is_none_or(is_python_library),
        }
    }

    /// The function, or `module+0x1189` without symbols.
    pub fn name(&self) -> String {
        match (&self.function, &self.module) {
            (Some(function), _) => function.clone(),
            (None, Some(module)) => format!("{module}+{:#x}", self.offset),
            (None, None) => format!("{:#x}", self.offset),
        }
    }

    /// ` at atexit_join.c:12` when the module has line information, else nothing. Python
    /// files are named without their directory (the module).
    pub fn source(&self) -> String {
        let file = match self.kind {
            FrameKind::Native => &self.file,
            FrameKind::Python => &self.module,
        };
        match (file, self.line) {
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
        match (self.kind, &self.function, &self.module) {
            (FrameKind::Native, Some(_), Some(module)) => {
                write!(f, " ({module}+{:#x})", self.offset)
            }
            _ => Ok(()),
        }
    }
}

/// A file of the Python standard library (under `lib/pythonX.Y/`, not in the packages
/// installed there), or frozen into the interpreter.
fn is_python_library(file: &str) -> bool {
    if file.starts_with("<frozen ") {
        return true;
    }
    let parts: Vec<&str> = file.split('/').collect();
    let in_lib = parts
        .windows(2)
        .any(|pair| matches!(pair[0], "lib" | "lib64") && pair[1].starts_with("python"));
    in_lib
        && !parts
            .iter()
            .any(|p| matches!(*p, "site-packages" | "dist-packages"))
}

impl Stack {
    /// The innermost frame in the program's own code: among the Python frames when
    /// there are any (the interpreter's native frames, its extension modules included,
    /// are not what the program's author wrote).
    pub fn user_frame(&self) -> Option<&Frame> {
        self.user_index().map(|at| &self.frames[at])
    }

    fn user_index(&self) -> Option<usize> {
        let python = self.frames.iter().any(|f| f.kind == FrameKind::Python);
        self.frames
            .iter()
            .position(|f| (!python || f.kind == FrameKind::Python) && !f.is_runtime())
    }

    /// What the program's own code is doing, and where: for Python, the call its line
    /// makes (`Popen.wait()`, the next frame in) and that line; for native code, the
    /// function and its line.
    pub fn user_call(&self) -> Option<(String, String)> {
        let at = self.user_index()?;
        let frame = &self.frames[at];
        let called = at
            .checked_sub(1)
            .map(|inner| &self.frames[inner])
            .filter(|inner| frame.kind == FrameKind::Python && inner.kind == FrameKind::Python);
        let name = match called {
            Some(inner) => format!("{}()", inner.name()),
            None => frame.name(),
        };
        Some((name, frame.source()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn python(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            kind: FrameKind::Python,
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
            module: file.rsplit('/').next().map(String::from),
            offset: 0,
        }
    }

    fn native(function: &str, module: &str) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: None,
            line: None,
            module: Some(module.into()),
            offset: 0x1189,
        }
    }

    #[test]
    fn the_standard_library_is_runtime_installed_packages_are_not() {
        let runtime = [
            "/usr/lib/python3.11/subprocess.py",
            "/opt/py/lib64/python3.9/threading.py",
            "<frozen importlib._bootstrap>",
        ];
        for file in runtime {
            assert!(python("f", file, 1).is_runtime(), "{file}");
        }
        let user = [
            "/home/me/build.py",
            "/usr/lib/python3/dist-packages/requests/api.py",
            "/venv/lib/python3.12/site-packages/pkg/mod.py",
            "<string>",
            "/srv/library/python/app.py",
        ];
        for file in user {
            assert!(!python("f", file, 1).is_runtime(), "{file}");
        }
    }

    #[test]
    fn python_code_is_named_by_the_call_its_line_makes() {
        let stack = Stack {
            frames: vec![
                native("__GI___wait4", "libc.so.6"),
                native("os_waitpid", "libpython3.11.so.1.0"),
                native("pyext_helper", "_helper.cpython-311-x86_64-linux-gnu.so"),
                python("Popen._wait", "/usr/lib/python3.11/subprocess.py", 2000),
                python("Popen.wait", "/usr/lib/python3.11/subprocess.py", 1262),
                python("<module>", "/home/me/build.py", 41),
            ],
            complete: true,
            python_thread: None,
        };
        assert_eq!(stack.user_frame(), Some(&stack.frames[5]));
        assert_eq!(
            stack.user_call(),
            Some(("Popen.wait()".into(), " at build.py:41".into()))
        );
        // Innermost in the user's own code: its own function, as native frames are.
        let own = Stack {
            frames: stack.frames[5..].to_vec(),
            complete: true,
            python_thread: None,
        };
        assert_eq!(
            own.user_call(),
            Some(("<module>".into(), " at build.py:41".into()))
        );
        let exiting = Stack {
            frames: vec![python(
                "_shutdown",
                "/usr/lib/python3.11/threading.py",
                1590,
            )],
            complete: true,
            python_thread: None,
        };
        assert_eq!(exiting.user_call(), None);
        assert_eq!(
            stack.frames[4].to_string(),
            "Popen.wait at subprocess.py:1262"
        );
    }

    #[test]
    fn native_code_is_named_by_its_own_function() {
        let stack = Stack {
            frames: vec![
                native("__pthread_clockjoin_ex", "libc.so.6"),
                native("join_worker", "atexit_join"),
                native("exit", "libc.so.6"),
            ],
            complete: true,
            python_thread: None,
        };
        assert_eq!(
            stack.user_call(),
            Some(("join_worker".into(), String::new()))
        );
    }
}
