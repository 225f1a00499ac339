//! `kubectl logs`: a container's CRI log files (see `crate::runtime::logs`) read back the way the
//! kubelet reads them: `P` pieces joined to their line, optional RFC 3339 timestamps, `since`,
//! `tail`, `limitBytes`, the previous run, and `follow` until the run ends.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_proto::stream_frame::Frame;
use keel_proto::{LogsOp, StreamEnd};

use super::{Io, Paths, PodRef};

/// How often a followed log is checked for more lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Output is sent in pieces of at most this size.
const CHUNK: usize = 32 * 1024;

/// One parsed CRI log line.
#[derive(Debug, PartialEq)]
pub struct Entry<'a> {
    pub timestamp: &'a str,
    pub unix_nanos: i64,
    pub stderr: bool,
    /// `F`: this ends a line; `P`: a piece of a longer one.
    pub full: bool,
    pub text: &'a [u8],
}

/// Parses `2026-11-23T14:40:01.123456789Z stdout F text`.
pub fn parse_line(line: &[u8]) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(parts.next()?).ok()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Entry {
        timestamp: ts,
        unix_nanos: parse_rfc3339_nanos(ts)?,
        stderr: stream == b"stderr",
        full: tag != b"P",
        text,
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` to Unix nanoseconds.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = s.get(19..)?.strip_suffix('Z')?;
    let nanos = match rest.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|c| c.is_ascii_digit()) => {
            f.parse::<i64>().ok()? * 10i64.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
        None if rest.is_empty() => 0,
        None => return None,
    };
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000_000 + nanos)
}

/// Renders entries as `kubectl logs` shows them.
pub struct Renderer {
    pub since: Option<i64>,
    pub timestamps: bool,
    /// Bytes still allowed (`limitBytes`).
    pub remaining: Option<u64>,
}

impl Renderer {
    fn render(&mut self, e: &Entry<'_>, out: &mut Vec<u8>) {
        if self.since.is_some_and(|s| e.unix_nanos < s) {
            return;
        }
        let start = out.len();
        if self.timestamps {
            out.extend_from_slice(e.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(e.text);
        if e.full {
            out.push(b'\n');
        }
        if let Some(rem) = self.remaining.as_mut() {
            let added = (out.len() - start) as u64;
            if added > *rem {
                out.truncate(start + *rem as usize);
                *rem = 0;
            } else {
                *rem -= added;
            }
        }
    }

    pub fn exhausted(&self) -> bool {
        self.remaining == Some(0)
    }
}

/// The whole lines of `data` (a trailing piece without `\n` is left out); with `tail`, only
/// the entries of the last `tail` log lines (a line is its `P` pieces and the `F` ending it).
pub fn render_all(data: &[u8], tail: Option<i64>, r: &mut Renderer) -> (Vec<u8>, usize) {
    let consumed = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let entries: Vec<Entry<'_>> = data[..consumed]
        .split(|b| *b == b'\n')
        .filter_map(parse_line)
        .collect();
    let first = match tail {
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(0);
            let mut lines = 0;
            let mut first = entries.len();
            for (i, e) in entries.iter().enumerate().rev() {
                if e.full {
                    if lines == n {
                        break;
                    }
                    lines += 1;
                }
                first = i;
            }
            first
        }
        None => 0,
    };
    let mut out = Vec::new();
    for e in &entries[first..] {
        if r.exhausted() {
            break;
        }
        r.render(e, &mut out);
    }
    (out, consumed)
}

/// The run numbers that have a log file, ascending.
fn runs(dir: &Path) -> Vec<u32> {
    let mut runs: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|r| r.parse().ok())
        })
        .collect();
    runs.sort_unstable();
    runs
}

/// The file from `offset` on, read off the agent's thread (logs can be large).
async fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

async fn send_chunks(io: &Io, data: Vec<u8>) -> bool {
    for chunk in data.chunks(CHUNK) {
        if !io.data(1, chunk.to_vec()).await {
            return false;
        }
    }
    true
}

pub async fn serve(paths: &Paths, pod: &PodRef, container: &str, op: &LogsOp, io: &mut Io) {
    let dir = pod.log_dir(paths, container);
    let runs = runs(&dir);
    let run = if op.previous {
        runs.len().checked_sub(2).map(|i| runs[i])
    } else {
        runs.last().copied()
    };
    let Some(run) = run else {
        if op.previous {
            io.fail(
                400,
                "BadRequest",
                format!(
                    "previous terminated container {container:?} in pod {:?} not found",
                    pod.name
                ),
            )
            .await;
        } else {
            io.end(StreamEnd::default()).await;
        }
        return;
    };
    let path: PathBuf = dir.join(format!("{run}.log"));
    let mut r = Renderer {
        since: op.since_unix_nanos,
        timestamps: op.timestamps,
        remaining: op.limit_bytes.map(|l| u64::try_from(l).unwrap_or(0)),
    };
    let data = match read_from(&path, 0).await {
        Ok(d) => d,
        Err(e) => {
            io.fail(500, "InternalError", format!("reading {}: {e}", path.display()))
                .await;
            return;
        }
    };
    let (out, consumed) = render_all(&data, op.tail_lines, &mut r);
    let mut offset = consumed as u64;
    if !send_chunks(io, out).await {
        return;
    }
    if op.follow && !op.previous {
        let mut idle_after_exit = 0;
        while !r.exhausted() {
            let wait = tokio::time::sleep(FOLLOW_POLL);
            tokio::select! {
                _ = wait => {}
                f = io.next() => match f {
                    None => return, // the client went away
                    Some(Frame::Close(_)) => return,
                    Some(_) => continue,
                }
            }
            let running = pod.running_pid(paths, container).is_some_and(|(r, _)| r == run);
            let data = read_from(&path, offset).await.unwrap_or_default();
            let (out, consumed) = render_all(&data, None, &mut r);
            offset += consumed as u64;
            if !out.is_empty() && !send_chunks(io, out).await {
                return;
            }
            if consumed == 0 && !running {
                // Ended: one more look for a last line the container's writer flushed late.
                idle_after_exit += 1;
                if idle_after_exit >= 2 {
                    break;
                }
            }
        }
    }
    io.end(StreamEnd::default()).await;
}

/// `kubectl attach` without stdin: the container's output from now on, stdout and stderr on
/// their own channels, until this run of the container ends or the client goes away.
pub async fn attach(paths: &Paths, pod: &PodRef, container: &str, op: &keel_proto::ExecOp, io: &mut Io) {
    if op.stdin {
        io.fail(
            400,
            "BadRequest",
            format!("attaching to the stdin of container {container:?} is not supported by this node"),
        )
        .await;
        return;
    }
    let Some((run, _)) = pod.running_pid(paths, container) else {
        io.fail(400, "BadRequest", format!("container not found ({container:?})"))
            .await;
        return;
    };
    let path = pod.log_dir(paths, container).join(format!("{run}.log"));
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            f = io.next() => match f {
                None => return,
                Some(_) => continue,
            },
        }
        let running = pod.running_pid(paths, container).is_some_and(|(r, _)| r == run);
        let data = read_from(&path, offset).await.unwrap_or_default();
        let consumed = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        offset += consumed as u64;
        for e in data[..consumed].split(|b| *b == b'\n').filter_map(parse_line) {
            let channel = if e.stderr && !op.tty { 2 } else { 1 };
            let wanted = if channel == 2 { op.stderr } else { op.stdout };
            if !wanted {
                continue;
            }
            let mut text = e.text.to_vec();
            if e.full {
                text.push(b'\n');
            }
            if !io.data(channel, text).await {
                return;
            }
        }
        if consumed == 0 && !running {
            break;
        }
    }
    io.end(StreamEnd::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = b"2026-11-23T14:40:01.000000001Z stdout F one\n\
2026-11-23T14:40:02.000000000Z stderr P tw\n\
2026-11-23T14:40:02.500000000Z stderr F o\n\
2026-11-23T14:40:03Z stdout F three\n\
2026-11-23T14:40:04.000000000Z stdout F part";

    fn plain() -> Renderer {
        Renderer {
            since: None,
            timestamps: false,
            remaining: None,
        }
    }

    #[test]
    fn timestamps_parse() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            parse_rfc3339_nanos("2026-11-18T11:06:40.000000005Z"),
            Some(1_795_000_000_000_000_005)
        );
        assert_eq!(parse_rfc3339_nanos("2026-11-18 11:06:40Z"), None);
        assert_eq!(parse_rfc3339_nanos("2026-11-18T11:06:40.Z"), None);
    }

    #[test]
    fn whole_lines_pieces_joined_unfinished_left() {
        let (out, consumed) = render_all(LOG, None, &mut plain());
        assert_eq!(out, b"one\ntwo\nthree\n");
        assert_eq!(&LOG[consumed..], b"2026-11-23T14:40:04.000000000Z stdout F part");
    }

    #[test]
    fn tail_counts_lines_not_pieces() {
        assert_eq!(render_all(LOG, Some(2), &mut plain()).0, b"two\nthree\n");
        assert_eq!(render_all(LOG, Some(0), &mut plain()).0, b"");
        assert_eq!(render_all(LOG, Some(9), &mut plain()).0, b"one\ntwo\nthree\n");
    }

    #[test]
    fn since_timestamps_and_limit() {
        let since = parse_rfc3339_nanos("2026-11-23T14:40:02.1Z");
        let mut r = Renderer {
            since,
            timestamps: true,
            remaining: None,
        };
        assert_eq!(
            String::from_utf8(render_all(LOG, None, &mut r).0).unwrap(),
            "2026-11-23T14:40:02.500000000Z o\n2026-11-23T14:40:03Z three\n"
        );
        let mut r = Renderer {
            since: None,
            timestamps: false,
            remaining: Some(6),
        };
        assert_eq!(render_all(LOG, None, &mut r).0, b"one\ntw");
        assert!(r.exhausted());
    }
}
