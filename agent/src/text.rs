//! Text that other processes chose (a comm, a command line) on its way to a terminal or a
//! text log: control characters are shown, not obeyed. A newline in a comm would
//! otherwise forge a log line, and an escape sequence would reach the reader's terminal.
use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0, DEL, C1) and every bidirectional override
/// written as an escape (`\n`, `\x1b`, `\u{202e}`); other text unchanged.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    // Bidirectional embeddings, overrides and isolates reorder what a terminal shows
    // ("Trojan Source"); they have no place in a process name.
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(printable("python3 (pid 7) é"), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_and_overrides_are_escaped() {
        assert_eq!(
            printable("a\nINFO forged\r\t\x1b[31mred\x7f\u{85}\u{202e}x"),
            "a\\nINFO forged\\r\\t\\x1b[31mred\\x7f\\x85\\u{202e}x"
        );
    }
}
