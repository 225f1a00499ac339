//! Container logs in the CRI format the kubelet's `kubectl logs` reads, one file per container
//! run (`/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log`):
//!
//! ```text
//! 2026-11-23T14:40:01.123456789Z stdout F hello
//! 2026-11-23T14:40:01.123501234Z stderr P first 16 KiB of a very long line…
//! ```
//!
//! `F` ends a line, `P` is a piece of a longer one (lines are cut at [`MAX_LINE`] bytes, as
//! containerd does). The container helper feeds what it reads from the container's stdout and
//! stderr pipes into a [`CriWriter`].

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest log line written whole; longer ones are split into `P` pieces.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Year, month, day, hour, minute, second of a Unix time (UTC), by Howard Hinnant's algorithm.
pub fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (y, mo, da, h, mi, s) = civil(d.as_secs() as i64);
    format!(
        "{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}.{:09}Z",
        d.subsec_nanos()
    )
}

/// Turns raw output into CRI log lines.
pub struct CriWriter<W: Write> {
    out: W,
    pending: [Vec<u8>; 2],
}

impl<W: Write> CriWriter<W> {
    pub fn new(out: W) -> Self {
        CriWriter {
            out,
            pending: [Vec::new(), Vec::new()],
        }
    }

    fn line(&mut self, stream: Stream, tag: &str, text: &[u8], now: SystemTime) -> io::Result<()> {
        write!(self.out, "{} {} {tag} ", rfc3339_nanos(now), stream.name())?;
        self.out.write_all(text)?;
        self.out.write_all(b"\n")
    }

    /// Takes a chunk of one stream's output.
    pub fn feed(&mut self, stream: Stream, data: &[u8], now: SystemTime) -> io::Result<()> {
        let i = stream as usize;
        let mut buf = std::mem::take(&mut self.pending[i]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl;
            let mut s = start;
            while end - s > MAX_LINE {
                self.line(stream, "P", &buf[s..s + MAX_LINE], now)?;
                s += MAX_LINE;
            }
            self.line(stream, "F", &buf[s..end], now)?;
            start = end + 1;
        }
        while buf.len() - start > MAX_LINE {
            self.line(stream, "P", &buf[start..start + MAX_LINE], now)?;
            start += MAX_LINE;
        }
        self.pending[i] = buf[start..].to_vec();
        self.out.flush()
    }

    /// The stream ended: what is left is a last, unterminated line.
    pub fn finish(&mut self, stream: Stream, now: SystemTime) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending[stream as usize]);
        if !rest.is_empty() {
            self.line(stream, "F", &rest, now)?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_tagged_and_long_ones_split() {
        let t = UNIX_EPOCH + Duration::new(1_795_000_000, 5);
        let mut w = CriWriter::new(Vec::new());
        w.feed(Stream::Stdout, b"hel", t).unwrap();
        w.feed(Stream::Stderr, b"oops\n", t).unwrap();
        w.feed(Stream::Stdout, b"lo\nwor", t).unwrap();
        w.finish(Stream::Stdout, t).unwrap();
        let long = vec![b'x'; MAX_LINE + 3];
        w.feed(Stream::Stdout, &long, t).unwrap();
        w.feed(Stream::Stdout, b"\n", t).unwrap();
        let text = String::from_utf8(w.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2026-11-18T11:06:40.000000005Z stderr F oops");
        assert_eq!(lines[1], "2026-11-18T11:06:40.000000005Z stdout F hello");
        assert_eq!(lines[2], "2026-11-18T11:06:40.000000005Z stdout F wor");
        assert!(lines[3].contains(" stdout P xxx"));
        assert_eq!(
            lines[3].len(),
            "2026-11-18T11:06:40.000000005Z stdout P ".len() + MAX_LINE
        );
        assert!(lines[4].ends_with(" stdout F xxx"));
        assert_eq!(lines.len(), 5);
    }
}
