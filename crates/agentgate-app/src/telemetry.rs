//! Logging: one line per rejection with code, request id, remote address and token
//! fingerprint. Tokens, tickets and secrets never reach a log line: only their
//! fingerprints do.

use std::net::SocketAddr;

use crate::error::Rejection;

/// Log a rejection once.
pub fn log_rejection(r: &Rejection, remote: SocketAddr) {
    crate::metrics::rejected(r.code);
    tracing::info!(
        reason = r.code.as_str(),
        request_id = %r.request_id,
        remote = %remote,
        token_fp = r.token_fp.as_deref().unwrap_or("-"),
        detail = %r.message,
        "handshake rejected"
    );
}

/// Install the global subscriber: human-readable or JSON lines on stderr, filtered by
/// `RUST_LOG` (default `info`).
///
/// Client-controlled text (a subject, an `Origin`, a path, MCP stderr) reaches log
/// fields, so every line passes through [`EscapingWriter`]: no field can start a new
/// line or carry a control character (PROTOCOL.md section 3). Colour codes are control
/// characters too, so none are written, terminal or not.
pub fn init(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| EscapingWriter(std::io::stderr()))
        .with_ansi(false)
        .with_target(false);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes log lines with every control character escaped (`\n`, `\r`, `\t`, others as
/// `\u00XX`), except the newline that ends each line. The formatter hands over one whole
/// line per write, so a forged newline inside a field can never start a line.
#[derive(Debug)]
pub struct EscapingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        let text = String::from_utf8_lossy(body);
        if !text.chars().any(needs_escape) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = escape_log_text(&text);
        if newline {
            out.push('\n');
        }
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `text` with every control character (C0, DEL, C1) and Unicode line separator
/// escaped, so it fits on one log line.
pub fn escape_log_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // `\uXXXX` is also a valid JSON escape, so JSON log lines stay valid JSON.
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn control_characters_never_reach_a_log_line() {
        let mut w = EscapingWriter(Vec::new());
        w.write_all(b"subject=alice\nINFO forged\r\x1b[31mred\x7f\xc2\x85 end\n").unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert_eq!(out, "subject=alice\\nINFO forged\\r\\u001b[31mred\\u007f\\u0085 end\n");
        assert_eq!(out.lines().count(), 1);
        assert!(!out.trim_end_matches('\n').chars().any(char::is_control));
    }

    #[test]
    fn plain_lines_pass_unchanged() {
        let mut w = EscapingWriter(Vec::new());
        w.write_all("ok ünïcode line\n".as_bytes()).unwrap();
        assert_eq!(w.0, "ok ünïcode line\n".as_bytes());
    }
}
