//! Where CPython 3.7 to 3.13 keep what a stack needs: the offsets of the few fields read,
//! per minor version, for 64-bit builds without `Py_DEBUG` (the layouts of
//! `_PyRuntimeState`, `PyInterpreterState`, `PyThreadState`, the frame and code objects
//! in CPython's headers; they change between minor versions, not patch releases).
use super::awaits::Awaits;

/// A CPython version, as `PY_VERSION_HEX` states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Version {
    /// From `PY_VERSION_HEX` (`0x030B07F0` is 3.11.7 final).
    pub fn from_hex(hex: u64) -> Self {
        Self {
            major: (hex >> 24) as u8,
            minor: (hex >> 16) as u8,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How a thread's frames are chained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frames {
    /// Up to 3.10, frame objects (`PyFrameObject`): `f_back`, `f_code`, and `f_lasti`,
    /// the last instruction as a byte offset (as an index of 2-byte code units in 3.10).
    Objects {
        back: u64,
        code: u64,
        lasti: u64,
        lasti_in_units: bool,
    },
    /// From 3.11, interpreter frames (`_PyInterpreterFrame`): the code object, the
    /// previous frame, the instruction pointer (into the code object's own copy of its
    /// bytecode, at `code_start` in the code object) and who owns the frame (frames the
    /// C stack owns, 3, are the interpreter's entry shims, not code).
    Interpreter {
        code: u64,
        previous: u64,
        instruction: u64,
        owner: u64,
        code_start: u64,
    },
}

/// Which table maps bytecode offsets to lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// `co_lnotab`, up to 3.9.
    Lnotab,
    /// `co_linetable` of 3.10.
    Linetable310,
    /// The location table of 3.11 and later.
    Locations,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// In `_PyRuntime`: `interpreters.main`, and `main_thread` (the main thread's
    /// `pthread_t`).
    pub main_interpreter: u64,
    pub main_thread: u64,
    /// In `PyInterpreterState`: the newest thread state (they are chained by `next`).
    pub threads_head: u64,
    /// In `PyThreadState`.
    pub next: u64,
    pub interp: u64,
    pub thread_id: u64,
    /// The thread's kernel id, from 3.11.
    pub native_thread_id: Option<u64>,
    /// Pointers followed from the thread state to its innermost frame (through
    /// `cframe` in 3.11 and 3.12).
    pub current_frame: &'static [u64],
    pub frames: Frames,
    /// In `PyCodeObject`.
    pub filename: u64,
    pub name: u64,
    pub qualname: Option<u64>,
    pub first_line: u64,
    pub line_table: u64,
    pub lines: LineTable,
    /// Where a compact string's characters start: after `PyASCIIObject` for ASCII,
    /// after `PyCompactUnicodeObject` otherwise.
    pub ascii_data: u64,
    pub compact_data: u64,
    /// In `PyInterpreterState`: `sys.modules` (`imports.modules` from 3.12).
    pub modules: u64,
    /// Where an object keeps its attributes (and how dicts and ints are laid out).
    pub attributes: Attributes,
    /// What `asyncio` tasks and coroutines keep where, from 3.11.
    pub awaits: Option<Awaits>,
}

/// Where instances of Python classes keep their attributes. From 3.11 a class's instances
/// share the keys of their attributes (`ht_cached_keys` in the class, at `cached_keys`)
/// and keep only the values until something asks for their `__dict__`; dicts then keep
/// the keys' indices' size as a power of two and store `str` keys without their hash, and
/// from 3.12 an int's size is in `lv_tag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attributes {
    /// Up to 3.10: a dict at the class's `tp_dictoffset` in the instance.
    DictOffset,
    /// 3.11: the values 4 words before the instance, else its dict 3 words before.
    Managed { cached_keys: u64 },
    /// 3.12: 3 words before the instance, the values (tagged by their low bit) or a dict.
    Tagged { cached_keys: u64 },
    /// 3.13: the values right after the instance (at the class's `tp_basicsize`, behind
    /// a header) while they are valid, else a dict 3 words before.
    Inline { cached_keys: u64 },
}

impl Attributes {
    /// Where a class keeps its instances' shared keys, from 3.11.
    pub fn cached_keys(self) -> Option<u64> {
        match self {
            Attributes::DictOffset => None,
            Attributes::Managed { cached_keys }
            | Attributes::Tagged { cached_keys }
            | Attributes::Inline { cached_keys } => Some(cached_keys),
        }
    }

    /// Bytes before a dict's (or an instance's) values: 3.13's `PyDictValues` header.
    pub fn values_header(self) -> u64 {
        match self {
            Attributes::Inline { .. } => 8,
            _ => 0,
        }
    }

    /// Whether an int states its size in `lv_tag` (3.12 and later), not `ob_size`.
    pub fn tagged_ints(self) -> bool {
        matches!(self, Attributes::Tagged { .. } | Attributes::Inline { .. })
    }
}

/// `ob_size` of a variable-size object (`PyBytesObject`'s length), its bytes, and a
/// string's length and state bits: the same in every version here.
pub const OB_TYPE: u64 = 8;
pub const OB_SIZE: u64 = 16;
pub const BYTES_DATA: u64 = 32;
pub const STRING_LENGTH: u64 = 16;
pub const STRING_STATE: u64 = 32;
/// A type object's `tp_name`, `tp_basicsize`, `tp_flags` and `tp_dictoffset`, the
/// same in every version here.
pub const TP_NAME: u64 = 24;
pub const TP_BASICSIZE: u64 = 32;
pub const TP_FLAGS: u64 = 168;
pub const TP_DICTOFFSET: u64 = 288;
/// A module's `md_dict`.
pub const MODULE_DICT: u64 = 16;
/// A dict's `ma_keys` and `ma_values`.
pub const DICT_KEYS: u64 = 32;
pub const DICT_VALUES: u64 = 40;

/// Frame objects up to 3.9: `f_lasti` counts bytes.
const OBJECTS_TO_3_9: Frames = Frames::Objects {
    back: 24,
    code: 32,
    lasti: 104,
    lasti_in_units: false,
};

/// The layout of `version`, if it is one exitwatch knows.
pub fn layout(version: Version) -> Option<&'static Layout> {
    if version.major != 3 {
        return None;
    }
    Some(match version.minor {
        7 => &V3_7,
        8 => &V3_8,
        9 => &V3_9,
        10 => &V3_10,
        11 => &V3_11,
        12 => &V3_12,
        13 => &V3_13,
        _ => return None,
    })
}

static V3_7: Layout = Layout {
    main_interpreter: 32,
    main_thread: 720,
    threads_head: 8,
    next: 8,
    interp: 16,
    thread_id: 176,
    native_thread_id: None,
    current_frame: &[24],
    frames: OBJECTS_TO_3_9,
    filename: 96,
    name: 104,
    qualname: None,
    first_line: 36,
    line_table: 112,
    lines: LineTable::Lnotab,
    ascii_data: 48,
    compact_data: 72,
    modules: 40,
    attributes: Attributes::DictOffset,
    awaits: None,
};

static V3_8: Layout = Layout {
    main_interpreter: 40,
    main_thread: 72,
    filename: 104,
    name: 112,
    first_line: 40,
    line_table: 120,
    modules: 56,
    ..V3_7
};

static V3_9: Layout = Layout {
    modules: 856,
    ..V3_8
};

static V3_10: Layout = Layout {
    frames: Frames::Objects {
        back: 24,
        code: 32,
        lasti: 96,
        lasti_in_units: true,
    },
    lines: LineTable::Linetable310,
    ..V3_9
};

static V3_11: Layout = Layout {
    main_interpreter: 48,
    main_thread: 80,
    threads_head: 16,
    thread_id: 152,
    native_thread_id: Some(160),
    current_frame: &[56, 8],
    frames: Frames::Interpreter {
        code: 32,
        previous: 48,
        instruction: 56,
        owner: 69,
        code_start: 184,
    },
    filename: 112,
    name: 120,
    qualname: Some(128),
    first_line: 72,
    line_table: 136,
    lines: LineTable::Locations,
    modules: 888,
    attributes: Attributes::Managed { cached_keys: 872 },
    awaits: Some(Awaits {
        task_coro: 136,
        frame_state: 75,
        frame: 80,
    }),
    ..V3_10
};

static V3_12: Layout = Layout {
    main_thread: 64,
    threads_head: 72,
    thread_id: 136,
    native_thread_id: Some(144),
    current_frame: &[56, 0],
    frames: Frames::Interpreter {
        code: 0,
        previous: 8,
        instruction: 56,
        owner: 70,
        code_start: 192,
    },
    first_line: 68,
    ascii_data: 40,
    compact_data: 56,
    modules: 944,
    attributes: Attributes::Tagged { cached_keys: 880 },
    awaits: Some(Awaits {
        task_coro: 136,
        frame_state: 67,
        frame: 72,
    }),
    ..V3_11
};

static V3_13: Layout = Layout {
    main_interpreter: 640,
    main_thread: 656,
    threads_head: 7344,
    thread_id: 152,
    native_thread_id: Some(160),
    current_frame: &[72],
    frames: Frames::Interpreter {
        code: 0,
        previous: 8,
        instruction: 56,
        owner: 70,
        code_start: 200,
    },
    modules: 7656,
    attributes: Attributes::Inline { cached_keys: 880 },
    awaits: Some(Awaits {
        task_coro: 120,
        frame_state: 67,
        frame: 72,
    }),
    ..V3_12
};

/// The words of 3.13's `_Py_DebugOffsets` (the start of `_PyRuntime`: a cookie, the
/// version, whether the build is free-threaded, then offsets) that must hold what
/// [`V3_13`] says, by their index: a build laid out otherwise (free-threaded, or with
/// `Py_DEBUG`) is not read.
pub fn debug_offsets_3_13() -> Vec<(usize, u64)> {
    let layout = &V3_13;
    let Frames::Interpreter {
        code,
        previous,
        instruction,
        owner,
        code_start,
    } = layout.frames
    else {
        return Vec::new();
    };
    vec![
        (2, 0),
        // `interpreters.head`, just before `interpreters.main`.
        (5, layout.main_interpreter - 8),
        (9, layout.threads_head),
        // `imports.modules`.
        (11, layout.modules),
        (21, layout.next),
        (22, layout.interp),
        (23, layout.current_frame[0]),
        (24, layout.thread_id),
        (25, layout.native_thread_id.unwrap_or(0)),
        (29, previous),
        (30, code),
        (31, instruction),
        (33, owner),
        (35, layout.filename),
        (36, layout.name),
        (37, layout.qualname.unwrap_or(0)),
        (38, layout.line_table),
        (39, layout.first_line),
        (43, code_start),
        (45, OB_TYPE),
        (47, TP_NAME),
    ]
}
