//! Parsers for the text formats under `/proc`, kept free of I/O so they can be
//! tested on literal strings. Errors are plain descriptions; the caller adds the path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{FdTarget, Mapping, Syscall, TaskStat};

fn num<T: FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("bad {what} {text:?}"))
}

fn hex(text: &str) -> Result<u64, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(digits, 16).map_err(|_| format!("bad hex value {text:?}"))
}

pub(super) fn stat(text: &str) -> Result<TaskStat, String> {
    // comm may itself contain spaces and ')', but nothing after it can, so the
    // last ')' is the only reliable end of comm.
    let open = text.find('(').ok_or("no '(' before comm")?;
    let close = text
        .rfind(')')
        .filter(|&c| c > open)
        .ok_or("no ')' after comm")?;
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // Fields are numbered from 1 in proc(5); the slice starts at field 3 (state).
    let field = |n: usize| {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| format!("missing field {n}"))
    };
    let mut state = field(3)?.chars();
    Ok(TaskStat {
        comm: text[open + 1..close].to_owned(),
        state: state
            .next()
            .filter(|_| state.next().is_none())
            .ok_or("bad state")?,
        ppid: num(field(4)?, "ppid")?,
        pgrp: num(field(5)?, "pgrp")?,
        num_threads: num(field(20)?, "num_threads")?,
        start_ticks: num(field(22)?, "starttime")?,
        cpu: num(field(39)?, "processor")?,
    })
}

pub(super) fn syscall(text: &str) -> Result<Syscall, String> {
    let text = text.trim();
    // The kernel cannot sample a task that is on a CPU right now.
    if text == "running" {
        return Ok(Syscall::Running);
    }
    let mut fields = text.split_ascii_whitespace();
    let nr: i64 = num(fields.next().ok_or("empty")?, "syscall number")?;
    // Any negative number means "not in a syscall"; only sp and pc follow.
    if nr < 0 {
        return Ok(Syscall::User);
    }
    let mut args = [0; 6];
    for arg in &mut args {
        *arg = hex(fields.next().ok_or("fewer than 6 arguments")?)?;
    }
    let sp = hex(fields.next().ok_or("no stack pointer")?)?;
    let pc = hex(fields.next().ok_or("no instruction pointer")?)?;
    Ok(Syscall::In { nr, args, sp, pc })
}

pub(super) fn exec_start_ns(text: &str) -> Result<Option<u64>, String> {
    // The header line embeds comm unescaped, so a task could forge an
    // "se.exec_start" line there; the genuine one always comes later.
    let Some(value) = text.lines().rev().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "se.exec_start").then(|| value.trim())
    }) else {
        return Ok(None);
    };
    // Printed as "<ms>.<6-digit ns remainder>"; integer arithmetic keeps full
    // nanosecond precision that an f64 would lose after a few days of uptime.
    let bad = || format!("bad se.exec_start {value:?}");
    let (ms, frac) = value.split_once('.').ok_or_else(bad)?;
    if frac.len() != 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let ms: u64 = ms.parse().map_err(|_| bad())?;
    let frac: u64 = frac.parse().map_err(|_| bad())?;
    ms.checked_mul(1_000_000)
        .and_then(|ns| ns.checked_add(frac))
        .map(Some)
        .ok_or_else(bad)
}

/// `tfd:        5 events:       19 data: ...` lines of an epoll fd's fdinfo.
pub(super) fn epoll_targets(fdinfo: &str) -> Result<Vec<(i32, u32)>, String> {
    fdinfo
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("tfd:"))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let fd = words.next().and_then(|w| w.parse().ok());
            let events = match (words.next(), words.next()) {
                (Some("events:"), Some(mask)) => u32::from_str_radix(mask, 16).ok(),
                _ => None,
            };
            fd.zip(events)
                .ok_or_else(|| format!("bad epoll line {rest:?}"))
        })
        .collect()
}

pub(super) fn fd_target(link: &Path) -> FdTarget {
    let text = link.to_string_lossy();
    text.strip_prefix("pipe:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inode| inode.parse().ok())
        .map_or_else(|| FdTarget::Other(text.into_owned()), FdTarget::Pipe)
}

/// One `maps` line: `start-end perms offset major:minor inode [name]`. Bytes rather than
/// `str`: names need not be UTF-8, and the kernel escapes only the newline (as `\012`),
/// so a name says nothing reliable about where the file is. It is kept for display and
/// for recognising libraries by name, never for opening.
pub(super) fn mapping(line: &[u8]) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || {
        let end = rest.iter().position(|&b| b == b' ')?;
        let (word, tail) = rest.split_at(end);
        rest = &tail[1..];
        Some(word)
    };
    let (start, end) = split_once(field()?, b'-')?;
    let perms: [u8; 4] = field()?.try_into().ok()?;
    let offset = hex_bytes(field()?)?;
    let (major, minor) = split_once(field()?, b':')?;
    let inode = std::str::from_utf8(field()?).ok()?.parse().ok()?;
    let (start, end) = (hex_bytes(start)?, hex_bytes(end)?);
    if start >= end {
        return None;
    }
    let name = rest.trim_ascii_start();
    let name = name.strip_suffix(b" (deleted)").unwrap_or(name);
    Some(Mapping {
        start,
        end,
        perms,
        offset,
        dev: (
            u32::try_from(hex_bytes(major)?).ok()?,
            u32::try_from(hex_bytes(minor)?).ok()?,
        ),
        inode,
        path: (inode != 0 && name.starts_with(b"/"))
            .then(|| PathBuf::from(OsStr::from_bytes(name))),
    })
}

/// Every well-formed line of a `maps` file; a malformed one is skipped, not fatal.
pub(super) fn mappings(maps: &[u8]) -> Vec<Mapping> {
    maps.split(|&b| b == b'\n').filter_map(mapping).collect()
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn hex_bytes(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_keep_addresses_offsets_devices_and_names() {
        let line = b"7f8595a8f000-7f8595be5000 r-xp 00026000 fe:01 326279    /usr/lib/libc.so.6";
        assert_eq!(
            mapping(line),
            Some(Mapping {
                start: 0x7f85_95a8_f000,
                end: 0x7f85_95be_5000,
                perms: *b"r-xp",
                offset: 0x26000,
                dev: (0xfe, 1),
                inode: 326_279,
                path: Some(PathBuf::from("/usr/lib/libc.so.6")),
            })
        );
        let stack = b"7ffd0000-7ffd2000 rw-p 00000000 00:00 0                  [stack]";
        assert_eq!(mapping(stack).map(|m| m.path), Some(None));
        let anonymous = b"7f42b4ca6000-7f42b4cc8000 rw-p 00000000 00:00 0 ";
        assert_eq!(mapping(anonymous).map(|m| m.inode), Some(0));
    }

    #[test]
    fn mapping_names_are_bytes_and_never_unescaped() {
        let odd = b"1000-2000 r--p 00000000 08:02 77   /tmp/x/\xff\xfe libc.so.6 (deleted)";
        let parsed = mapping(odd).expect("a non-UTF-8 name is still a mapping");
        let name = parsed.path.expect("a file mapping");
        assert_eq!(name.as_os_str().as_bytes(), b"/tmp/x/\xff\xfe libc.so.6");
        // A newline in a name is printed as \012: the name keeps the escape as printed,
        // which is why no name from here is ever opened.
        let escaped = b"1000-2000 r--p 00000000 08:02 78   /tmp/x/libc.so.6\\012X";
        let name = mapping(escaped)
            .and_then(|m| m.path)
            .expect("a file mapping");
        assert_eq!(name.as_os_str().as_bytes(), b"/tmp/x/libc.so.6\\012X");
    }

    #[test]
    fn bad_maps_lines_are_skipped_not_fatal() {
        let maps = b"1000-2000 r--p 00000000 08:02 77   /usr/lib/libc.so.6\n\
            zz-1 r-xp 0 0:0 0\n\
            3000-2000 r--p 00000000 08:02 77   /backwards\n\
            4000-5000 r--p 00000000 08:02\n\
            4000-5000 r--p 00000000 0802 5 /no-minor\n\
            \xff\xff garbage\n\
            \n\
            6000-7000 r-xp 00001000 08:02 79   /usr/bin/\xffpython\n";
        let starts: Vec<u64> = mappings(maps).iter().map(|m| m.start).collect();
        assert_eq!(starts, [0x1000, 0x6000]);
    }

    #[test]
    fn malformed_input_is_rejected() {
        assert!(stat("1 (a) S 0 1").is_err());
        assert!(stat(")1 (").is_err());
        assert!(syscall("7 0x1 0x2").is_err());
        assert!(syscall("7 0x1 0x2 0x3 0x4 0x5 zz 0x0 0x0").is_err());
        assert!(exec_start_ns("se.exec_start : 12.5\n").is_err());
        let epoll = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
            tfd:        5 events:       19 data:                5  pos:0 ino:3f0a sdev:e\n\
            tfd:        7 events:        4 data:                7  pos:0 ino:3f0b sdev:e\n";
        assert_eq!(epoll_targets(epoll), Ok(vec![(5, 0x19), (7, 4)]));
        assert_eq!(epoll_targets("flags:\t02\n"), Ok(vec![]));
        assert!(epoll_targets("tfd: x events: 1\n").is_err());
    }

    #[test]
    fn exec_start_ignores_forged_header_and_keeps_precision() {
        let text = "se.exec_start:9 (7, #threads: 1)\n----\n\
                    se.exec_start    :   1234567890.000001\n";
        assert_eq!(exec_start_ns(text), Ok(Some(1_234_567_890_000_001)));
    }

    #[test]
    fn only_well_formed_pipe_links_are_pipes() {
        assert_eq!(fd_target(Path::new("pipe:[12]")), FdTarget::Pipe(12));
        let other = "anon_inode:[eventfd]";
        assert_eq!(fd_target(Path::new(other)), FdTarget::Other(other.into()));
        assert!(matches!(
            fd_target(Path::new("pipe:[x]")),
            FdTarget::Other(_)
        ));
    }
}
