//! The line of a bytecode offset, from the table each CPython version keeps in its code
//! objects (the algorithms of `PyCode_Addr2Line`; Objects/lnotab_notes.txt and
//! InternalDocs/locations.md describe the formats). Tables come from another process:
//! every step is bounded by the table's length, and nonsense gives a wrong line or none,
//! never a panic.
use super::layout::LineTable;

/// The line holding byte offset `offset` of the bytecode, `None` for code with no line.
pub fn line(format: LineTable, table: &[u8], first_line: i32, offset: u64) -> Option<u32> {
    let first_line = i64::from(first_line);
    let line = match format {
        LineTable::Lnotab => Some(lnotab(table, first_line, offset)),
        LineTable::Linetable310 => linetable_310(table, first_line, offset),
        LineTable::Locations => locations(table, first_line, offset),
    }?;
    u32::try_from(line).ok().filter(|line| *line > 0)
}

/// Up to 3.9: pairs of (bytes advanced, lines advanced as a signed byte).
fn lnotab(table: &[u8], first_line: i64, offset: u64) -> i64 {
    let mut line = first_line;
    let mut address = 0u64;
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > offset {
            break;
        }
        line = line.saturating_add(i64::from(pair[1] as i8));
    }
    line
}

/// 3.10: pairs of (bytes the range covers, lines advanced as a signed byte, -128 for a
/// range without a line).
fn linetable_310(table: &[u8], first_line: i64, offset: u64) -> Option<i64> {
    let mut line = first_line;
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let here = (delta != -128).then(|| {
            line = line.saturating_add(i64::from(delta));
            line
        });
        if start <= offset && offset < end {
            return here;
        }
    }
    None
}

/// 3.11 and later: entries that each start with a byte with its top bit set, holding a
/// code (what follows) and the number of 2-byte code units covered.
fn locations(table: &[u8], first_line: i64, offset: u64) -> Option<i64> {
    let mut line = first_line;
    let mut end = 0u64;
    let mut at = 0;
    while let Some(&first) = table.get(at) {
        let code = (first >> 3) & 15;
        let start = end;
        end += (u64::from(first & 7) + 1) * 2;
        line = line.saturating_add(match code {
            // No column information, or the long form: the line delta follows.
            13 | 14 => signed_varint(table.get(at + 1..)?)?,
            // One-line forms: the delta is in the code.
            10..=12 => i64::from(code - 10),
            // Short forms (same line), and "no location".
            _ => 0,
        });
        if start <= offset && offset < end {
            return (code != 15).then_some(line);
        }
        at += 1;
        while table.get(at).is_some_and(|byte| byte & 0x80 == 0) {
            at += 1;
        }
    }
    None
}

/// 6 bits a byte, least significant first, bit 6 set on all bytes but the last.
fn varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 63) << (6 * index);
        if byte & 64 == 0 {
            return Some(value);
        }
    }
    None
}

/// A varint whose lowest bit is the sign.
fn signed_varint(bytes: &[u8]) -> Option<i64> {
    let value = varint(bytes)?;
    let magnitude = i64::try_from(value >> 1).ok()?;
    Some(if value & 1 == 1 {
        -magnitude
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables CPython made for this function (`co_lnotab`, `co_linetable`), and the
    /// lines `dis.findlinestarts` (3.8: each offset has the line of the last start before
    /// it) or `co_lines()` give for its bytecode, as
    /// (offset, line) where the line changes:
    ///
    /// ```text
    /// def f(items):
    ///     total = 0
    ///     for item in items:
    ///         total += item
    ///     <140 empty lines>
    ///     if total:
    ///         return (total,
    ///                 total)
    ///     return None
    /// ```
    fn check(format: LineTable, hex: &str, bytecode: u64, changes: &[(u64, u32)]) {
        let table: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
            .collect();
        for offset in (0..bytecode).step_by(2) {
            let expected = changes
                .iter()
                .rev()
                .find(|(start, _)| *start <= offset)
                .map(|(_, line)| *line);
            assert_eq!(
                line(format, &table, 1, offset),
                expected,
                "{format:?} at offset {offset}"
            );
        }
    }

    /// Where the lines change in both 3.8 and 3.10 (which mean the same by their tables).
    const CHANGES_3_8_AND_3_10: [(u64, u32); 8] = [
        (0, 2),
        (4, 3),
        (12, 4),
        (22, 145),
        (26, 146),
        (28, 147),
        (30, 146),
        (34, 148),
    ];

    #[test]
    fn lnotab_of_3_8() {
        let table = "0001040108010a7f000e0401020102ff0402";
        check(LineTable::Lnotab, table, 38, &CHANGES_3_8_AND_3_10);
    }

    #[test]
    fn linetable_of_3_10() {
        let table = "040108010a01007f040e0201020104ff0402";
        check(LineTable::Linetable310, table, 38, &CHANGES_3_8_AND_3_10);
    }

    #[test]
    fn location_tables_of_3_11_and_3_13() {
        let changes = [
            (0, 1),
            (2, 2),
            (6, 3),
            (14, 4),
            (26, 145),
            (30, 146),
            (32, 147),
            (34, 146),
            (38, 148),
        ];
        let table =
            "8000d80c0d8045d81015f000010516f0000105168804d8080d9014890d88058805f05a0400080d\
                     f000020517d81015d81015f003011017f000010917e00b0f8834";
        check(LineTable::Locations, table, 42, &changes);
        let changes = [
            (0, 1),
            (2, 2),
            (6, 3),
            (16, 4),
            (28, 3),
            (32, 145),
            (46, 146),
            (48, 147),
            (50, 146),
            (54, 148),
        ];
        let table =
            "8000d80c0d8045db10158804d8080d890d8a05f103001116f65c0400080dd81015d81015f00301\
                     1017f000010917e00b0f";
        check(LineTable::Locations, table, 56, &changes);
    }

    #[test]
    fn garbage_tables_give_no_line_or_a_wrong_one_without_panicking() {
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        for format in [
            LineTable::Lnotab,
            LineTable::Linetable310,
            LineTable::Locations,
        ] {
            for offset in [0, 1, 77, 4095, u64::MAX] {
                let _ = line(format, &garbage, i32::MAX, offset);
                let _ = line(format, &garbage[..3], -5, offset);
                assert_eq!(line(format, &[], 0, offset), None);
            }
        }
        // A varint that never ends.
        assert_eq!(signed_varint(&[0x7f; 32]), None);
    }
}
