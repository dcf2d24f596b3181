//! The SAM v3 wire format: one line per command and per reply, parsed strictly.
//!
//! A reply is `TOPIC TYPE KEY=VALUE …` terminated by `\n`, where a value is either a run of
//! non-space characters or a double-quoted string (`\"` and `\\` escaped inside). Everything the
//! router sends is untrusted: a line is at most [`MAX_LINE`] bytes, holds at most [`MAX_PAIRS`]
//! pairs, printable ASCII only, and no key appears twice. Anything else is a
//! [`SamError::Malformed`] naming what was wrong, never a panic.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::error::SamError;

/// Longest line accepted from the router, newline included. The longest legitimate reply
/// carries a private destination with an offline-signature certificate, well under 4 KiB.
pub const MAX_LINE: usize = 8192;
/// Most `KEY=VALUE` pairs in one reply.
pub const MAX_PAIRS: usize = 32;

/// One parsed reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// First word, e.g. `HELLO`, `SESSION`, `STREAM`, `NAMING`, `DEST`.
    pub topic: String,
    /// Second word, e.g. `REPLY`, `STATUS`.
    pub kind: String,
    /// The pairs, in order.
    pub pairs: Vec<(String, String)>,
}

impl Reply {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Checks the reply is `topic kind` and its `RESULT` is `OK`. A different result becomes
    /// [`SamError::Refused`] with the router's `MESSAGE`.
    pub fn expect_ok(&self, topic: &str, kind: &str) -> Result<&Self, SamError> {
        if self.topic != topic || self.kind != kind {
            return Err(SamError::Malformed(format!(
                "expected a {topic} {kind} reply, got {} {}",
                self.topic, self.kind
            )));
        }
        match self.get("RESULT") {
            Some("OK") => Ok(self),
            Some(result) => Err(SamError::Refused {
                result: result.to_owned(),
                message: self.get("MESSAGE").unwrap_or_default().to_owned(),
            }),
            None => Err(SamError::Malformed(format!(
                "{topic} {kind} reply without RESULT"
            ))),
        }
    }

    /// The value of `key`, or a [`SamError::Malformed`] saying it is missing.
    pub fn require(&self, key: &str) -> Result<&str, SamError> {
        self.get(key).ok_or_else(|| {
            SamError::Malformed(format!("{} {} reply without {key}", self.topic, self.kind))
        })
    }
}

fn is_word_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Parses one reply line (with or without its trailing `\n`).
pub fn parse_reply(line: &[u8]) -> Result<Reply, SamError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() >= MAX_LINE {
        return Err(SamError::LineTooLong { limit: MAX_LINE });
    }
    if let Some(bad) = line.iter().find(|b| !(0x20..0x7f).contains(*b)) {
        return Err(SamError::Malformed(format!(
            "byte 0x{bad:02x} in a reply (only printable ASCII is allowed)"
        )));
    }
    let mut rest = line;
    let mut word = || -> Option<String> {
        let start = rest.iter().position(|b| *b != b' ')?;
        rest = &rest[start..];
        let end = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
        let w = &rest[..end];
        rest = &rest[end..];
        w.iter()
            .all(|b| b.is_ascii_uppercase())
            .then(|| String::from_utf8_lossy(w).into_owned())
    };
    let topic = word().ok_or_else(|| SamError::Malformed("reply has no topic word".into()))?;
    let kind = word().ok_or_else(|| SamError::Malformed("reply has no type word".into()))?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    while let Some(start) = rest.iter().position(|b| *b != b' ') {
        rest = &rest[start..];
        if pairs.len() == MAX_PAIRS {
            return Err(SamError::Malformed(format!(
                "more than {MAX_PAIRS} pairs in a reply"
            )));
        }
        let eq = rest
            .iter()
            .position(|b| *b == b'=' || *b == b' ')
            .filter(|i| rest[*i] == b'=')
            .ok_or_else(|| SamError::Malformed("a reply field is not KEY=VALUE".into()))?;
        let key = &rest[..eq];
        if key.is_empty() || !key.iter().all(|b| is_word_char(*b)) {
            return Err(SamError::Malformed(format!(
                "bad key {:?} in a reply",
                String::from_utf8_lossy(key)
            )));
        }
        rest = &rest[eq + 1..];
        let value = if rest.first() == Some(&b'"') {
            let mut value = Vec::new();
            let mut i = 1;
            loop {
                match rest.get(i) {
                    None => return Err(SamError::Malformed("unterminated quoted value".into())),
                    Some(b'"') => break,
                    Some(b'\\') => match rest.get(i + 1) {
                        Some(c @ (b'"' | b'\\')) => {
                            value.push(*c);
                            i += 2;
                        }
                        _ => return Err(SamError::Malformed("bad escape in quoted value".into())),
                    },
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
            rest = &rest[i + 1..];
            if rest.first().is_some_and(|b| *b != b' ') {
                return Err(SamError::Malformed(
                    "text right after a quoted value".into(),
                ));
            }
            value
        } else {
            let end = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
            let v = rest[..end].to_vec();
            rest = &rest[end..];
            v
        };
        let key = String::from_utf8_lossy(key).into_owned();
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(SamError::Malformed(format!("key {key} twice in a reply")));
        }
        // Printable ASCII was checked above, so this is lossless.
        pairs.push((key, String::from_utf8_lossy(&value).into_owned()));
    }
    Ok(Reply { topic, kind, pairs })
}

/// Reads one line of at most [`MAX_LINE`] bytes, without consuming anything after its `\n`.
/// End of stream before a newline is [`SamError::RouterClosed`].
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, SamError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await.map_err(SamError::io)?;
        if available.is_empty() {
            return Err(SamError::RouterClosed);
        }
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Err(SamError::LineTooLong { limit: MAX_LINE });
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            return Ok(line);
        }
    }
}

/// Formats a command value: bare when it is a plain token, quoted otherwise. Refuses what the
/// protocol cannot carry (newlines, non-ASCII), so a caller's input never splits a command.
pub fn command_value(value: &str) -> Result<String, SamError> {
    if value.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(SamError::InvalidArgument(format!(
            "{value:?} contains a character SAM cannot carry"
        )));
    }
    if !value.is_empty() && value.bytes().all(|b| b != b' ' && b != b'"' && b != b'\\') {
        return Ok(value.to_owned());
    }
    Ok(format!(
        "\"{}\"",
        value.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_from_i2pd() {
        let r = parse_reply(b"HELLO REPLY RESULT=OK VERSION=3.1\n").unwrap();
        assert_eq!(r.topic, "HELLO");
        assert_eq!(r.kind, "REPLY");
        assert_eq!(r.get("VERSION"), Some("3.1"));
        r.expect_ok("HELLO", "REPLY").unwrap();

        let r = parse_reply(b"STREAM STATUS RESULT=CANT_REACH_PEER MESSAGE=\"no lease set\"\n")
            .unwrap();
        match r.expect_ok("STREAM", "STATUS") {
            Err(SamError::Refused { result, message }) => {
                assert_eq!(result, "CANT_REACH_PEER");
                assert_eq!(message, "no lease set");
            }
            other => panic!("{other:?}"),
        }
        let r = parse_reply(b"NAMING REPLY RESULT=OK NAME=ME VALUE=ab~-cd==").unwrap();
        assert_eq!(r.require("VALUE").unwrap(), "ab~-cd==");
        let r = parse_reply(br#"X Y M="a \"q\" \\ b""#).unwrap();
        assert_eq!(r.get("M"), Some(r#"a "q" \ b"#));
        let r = parse_reply(b"SESSION STATUS RESULT=OK MESSAGE=").unwrap();
        assert_eq!(r.get("MESSAGE"), Some(""));
    }

    #[test]
    fn refuses_hostile_lines() {
        let long = vec![b'A'; MAX_LINE + 10];
        assert!(matches!(
            parse_reply(&long),
            Err(SamError::LineTooLong { .. })
        ));
        for bad in [
            &b""[..],
            b"hello reply",
            b"HELLO",
            b"HELLO REPLY RESULT",
            b"HELLO REPLY =OK",
            b"HELLO REPLY RESULT=OK RESULT=OK",
            b"HELLO REPLY M=\"open",
            b"HELLO REPLY M=\"a\"b",
            b"HELLO REPLY M=\"\\x\"",
            b"HELLO REPLY K\x00=1",
            b"HELLO REPLY K=\xff",
            b"HELLO REPLY K$=1",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(SamError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: String = (0..=MAX_PAIRS).map(|i| format!(" K{i}=v")).collect();
        assert!(parse_reply(format!("A B{many}").as_bytes()).is_err());
        assert!(matches!(
            parse_reply(b"HELLO REPLY VERSION=3.1")
                .unwrap()
                .expect_ok("HELLO", "REPLY"),
            Err(SamError::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(b"SESSION STATUS RESULT=OK")
                .unwrap()
                .expect_ok("HELLO", "REPLY"),
            Err(SamError::Malformed(_))
        ));
    }

    #[test]
    fn command_values_cannot_inject() {
        assert_eq!(command_value("abc").unwrap(), "abc");
        assert_eq!(command_value("a b").unwrap(), "\"a b\"");
        assert_eq!(command_value("").unwrap(), "\"\"");
        assert_eq!(command_value("a\"b").unwrap(), "\"a\\\"b\"");
        assert!(command_value("a\nSESSION CREATE").is_err());
        assert!(command_value("é").is_err());
        // What we quote, the parser reads back.
        for v in ["a b", "x\"y", "back\\slash", ""] {
            let line = format!("A B K={}", command_value(v).unwrap());
            assert_eq!(parse_reply(line.as_bytes()).unwrap().get("K"), Some(v));
        }
    }

    #[tokio::test]
    async fn read_line_keeps_what_follows() {
        let data: &[u8] = b"STREAM STATUS RESULT=OK\npayload";
        let mut reader = tokio::io::BufReader::new(data);
        let line = read_line(&mut reader).await.unwrap();
        assert_eq!(line, b"STREAM STATUS RESULT=OK\n");
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
            .await
            .unwrap();
        assert_eq!(rest, b"payload");

        let mut eof = tokio::io::BufReader::new(&b"HELLO REP"[..]);
        assert!(matches!(
            read_line(&mut eof).await,
            Err(SamError::RouterClosed)
        ));
        let endless = vec![b'A'; MAX_LINE * 3];
        let mut endless = tokio::io::BufReader::new(&endless[..]);
        assert!(matches!(
            read_line(&mut endless).await,
            Err(SamError::LineTooLong { .. })
        ));
    }
}
