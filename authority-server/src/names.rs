//! Names people read: the character sets the authority accepts for key, package, channel,
//! upload and token names, and escaping for anything that reaches a terminal or a log.
//!
//! A name travels from the API into signed metadata, drafts exported for offline signing,
//! the audit log, logs and terminals. A name with control characters (terminal escape
//! sequences, `\r`, NUL) or bidirectional overrides could hide itself, or other text, from the
//! person reading it, so such names are refused where they enter (the API, `sign`), and
//! [`escape`] is applied where stored text is printed.
//!
//! | kind | length | characters |
//! |---|---|---|
//! | key, package, channel | 1..=64 bytes | ASCII letters, digits, `.`, `_`, `-`; first a letter or digit |
//! | upload (file label) | 1..=255 bytes | ASCII letters, digits, `.`, `_`, `-`, `+`, `~`; first a letter or digit |
//! | token | 1..=64 characters | printable characters (no control characters, no bidirectional controls) |

use std::fmt::Write as _;

/// Which kind of name is checked (each has its own rule; see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameKind {
    /// A root key's name.
    Key,
    /// A release's package.
    Package,
    /// A release's channel.
    Channel,
    /// An uploaded file's label.
    Upload,
    /// An API token's holder.
    Token,
}

impl NameKind {
    /// How the kind is called in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Key => "key name",
            NameKind::Package => "package",
            NameKind::Channel => "channel",
            NameKind::Upload => "upload name",
            NameKind::Token => "token name",
        }
    }

    fn max_len(self) -> usize {
        match self {
            NameKind::Upload => 255,
            _ => 64,
        }
    }

    /// The rule as an ECMA-262 / JSON Schema regular expression (for the OpenAPI document;
    /// lengths in characters, as JSON Schema counts them).
    pub fn pattern(self) -> &'static str {
        match self {
            NameKind::Key | NameKind::Package | NameKind::Channel => {
                "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
            }
            NameKind::Upload => "^[A-Za-z0-9][A-Za-z0-9._+~-]{0,254}$",
            // Everything but what `is_hiding` refuses.
            NameKind::Token => {
                r"^[^\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\u061c]{1,64}$"
            }
        }
    }

    /// The rule, in words.
    pub fn rule(self) -> &'static str {
        match self {
            NameKind::Key | NameKind::Package | NameKind::Channel => {
                "1..=64 bytes of ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
            }
            NameKind::Upload => {
                "1..=255 bytes of ASCII letters, digits, '.', '_', '-', '+' or '~', starting with a letter or digit"
            }
            NameKind::Token => "1..=64 printable characters",
        }
    }
}

/// A name outside its character set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {shown} is not allowed: use {rule}", kind = .kind.as_str(), rule = .kind.rule())]
#[non_exhaustive]
pub struct NameError {
    /// The kind of name.
    pub kind: NameKind,
    /// The refused name, escaped so that printing it is safe.
    pub shown: String,
}

/// Whether `c` changes how text around it is displayed: control characters (C0, DEL, C1, so
/// every terminal escape sequence) and Unicode bidirectional and invisible formatting controls.
pub fn is_hiding(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{061C}'
        )
}

/// Checks `name` against the rule of `kind`.
pub fn check(kind: NameKind, name: &str) -> Result<(), NameError> {
    let refuse = || NameError {
        kind,
        shown: quoted(name),
    };
    // In characters (the same as bytes for the ASCII-only kinds).
    if name.is_empty() || name.chars().count() > kind.max_len() {
        return Err(refuse());
    }
    let ok = match kind {
        NameKind::Token => !name.chars().any(is_hiding),
        NameKind::Key | NameKind::Package | NameKind::Channel | NameKind::Upload => {
            let extra: &[u8] = if kind == NameKind::Upload {
                b"._-+~"
            } else {
                b"._-"
            };
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
                && name.as_bytes()[0].is_ascii_alphanumeric()
        }
    };
    if ok { Ok(()) } else { Err(refuse()) }
}

/// `s` with every character for which [`is_hiding`] holds, and `\`, written as a Rust-style
/// escape (`\u{1b}`), so that printing it shows every character and moves nothing on screen.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_hiding(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` escaped and in double quotes (so that leading or trailing spaces show).
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    out.push_str(&escape(s).replace('"', "\\\""));
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_follow_their_character_sets() {
        for good in ["k1", "alice", "app", "stable", "a.b_c-d", "9"] {
            for kind in [NameKind::Key, NameKind::Package, NameKind::Channel] {
                check(kind, good).unwrap();
            }
        }
        for bad in [
            "",
            "-lead",
            ".hidden",
            "a/b",
            "a\0b",
            "a b",
            "k\u{1b}[2K",
            "é",
            "k\u{202e}1",
            &"x".repeat(65),
        ] {
            for kind in [NameKind::Key, NameKind::Package, NameKind::Channel] {
                let e = check(kind, bad).unwrap_err().to_string();
                assert!(!e.contains('\u{1b}') && !e.contains('\0'), "{e:?}");
            }
        }
        check(NameKind::Upload, "app-1.0.0+build~2.tar.zst").unwrap();
        check(NameKind::Upload, &"x".repeat(255)).unwrap();
        assert!(check(NameKind::Upload, "../etc/passwd").is_err());
        check(NameKind::Token, "a publisher (CI)").unwrap();
        assert!(check(NameKind::Token, "ci\r\n").is_err());
        assert!(check(NameKind::Token, "a\u{2066}b").is_err());
    }

    #[test]
    fn escaping_leaves_no_control_characters() {
        let shown = escape("k\u{1b}[8mhidden\u{9b}\r\u{202e}\\x");
        assert_eq!(shown, "k\\u{1b}[8mhidden\\u{9b}\\u{d}\\u{202e}\\\\x");
        assert!(!shown.chars().any(is_hiding));
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
    }
}
