//! The write-ahead log: how committed writes reach the disk before they are acknowledged.
//!
//! The log is a sequence of segment files `wal-<first revision, 20 digits>.log` in the data
//! directory. A segment is preallocated (`fallocate`) and filled with records:
//!
//! ```text
//! record  = len: u32 LE | crc32(payload): u32 LE | payload (len bytes)
//! payload = 1u8 | revision: u64 | create_revision: u64 | key_len: u32 | key | value   (put)
//!         | 2u8 | revision: u64 | key_len: u32 | key                                  (delete)
//! ```
//!
//! A zero `len` (the preallocated, never written part) marks the end of a segment. Records carry
//! their revision so that recovery can check the sequence has no gap.
//!
//! Recovery reads every segment in order. A record that is short or fails its checksum at the end
//! of the *last* segment is a write torn by a crash: it was never acknowledged (a write is
//! acknowledged only after the `fdatasync` of its batch), so the segment is truncated there. The
//! same damage in an earlier segment, which was fully synced before the next one was started, is
//! real corruption and fails the open instead of silently dropping acknowledged writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::sys;
use crate::mvcc::Change;
use crate::{Result, StoreError};

const HEADER: usize = 8;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// A log write plus sync slower than this is worth a warning: every writer waits for it.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(500);

/// The file name of the segment whose first record is `first_revision`.
pub(super) fn segment_name(first_revision: u64) -> String {
    format!("wal-{first_revision:020}.log")
}

/// Parses a segment file name back into its first revision.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok()
}

/// Appends the record of `change` at `revision` to `buf`.
pub(super) fn encode(buf: &mut Vec<u8>, revision: u64, change: &Change) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    match change {
        Change::Put {
            key,
            value,
            create_revision,
        } => {
            buf.push(KIND_PUT);
            buf.extend_from_slice(&revision.to_le_bytes());
            buf.extend_from_slice(&create_revision.to_le_bytes());
            put_key(buf, key);
            buf.extend_from_slice(value);
        }
        Change::Delete { key } => {
            buf.push(KIND_DELETE);
            buf.extend_from_slice(&revision.to_le_bytes());
            put_key(buf, key);
        }
    }
    let payload = &buf[start + HEADER..];
    // Keys and values are bounded far below 4 GiB by the API server; a record that does not fit
    // is caught at decode time as a length mismatch rather than silently wrapped here.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn put_key(buf: &mut Vec<u8>, key: &str) {
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(key.as_bytes());
}

fn decode(payload: &[u8]) -> Option<(u64, Change)> {
    let (&kind, rest) = payload.split_first()?;
    let (revision, rest) = take_u64(rest)?;
    match kind {
        KIND_PUT => {
            let (create_revision, rest) = take_u64(rest)?;
            let (key, value) = take_key(rest)?;
            Some((
                revision,
                Change::Put {
                    key,
                    value: Bytes::copy_from_slice(value),
                    create_revision,
                },
            ))
        }
        KIND_DELETE => {
            let (key, rest) = take_key(rest)?;
            rest.is_empty().then_some((revision, Change::Delete { key }))
        }
        _ => None,
    }
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

fn take_key(b: &[u8]) -> Option<(Arc<str>, &[u8])> {
    let (len, rest) = b.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (key, rest) = rest.split_at(len);
    Some((Arc::from(std::str::from_utf8(key).ok()?), rest))
}

/// Why reading a segment stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SegmentEnd {
    /// A zero length or the end of the file: the segment ends cleanly.
    Clean,
    /// A short or damaged record; `reason` says which.
    Damaged { reason: String },
}

/// The outcome of reading one segment.
pub(super) struct SegmentScan {
    /// Offset just after the last good record.
    pub(super) valid_len: u64,
    pub(super) end: SegmentEnd,
}

/// Reads the records of the segment at `path` in order, handing each to `apply`.
pub(super) fn read_segment(
    path: &Path,
    mut apply: impl FnMut(u64, Change) -> Result<()>,
) -> Result<SegmentScan> {
    let file = File::open(path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io(format!("reading metadata of {}", path.display()), e))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        match read_full(&mut reader, &mut header) {
            Ok(0) => return Ok(scan(offset, SegmentEnd::Clean)),
            Ok(n) if n < HEADER => return Ok(damaged(offset, "short record header")),
            Ok(_) => {}
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            return Ok(scan(offset, SegmentEnd::Clean));
        }
        // A damaged length must not make recovery allocate gigabytes.
        if offset + (HEADER as u64) + u64::from(len) > file_len {
            return Ok(damaged(offset, "record runs past the end of the file"));
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        payload.resize(len, 0);
        match read_full(&mut reader, &mut payload) {
            Ok(n) if n < len => return Ok(damaged(offset, "short record")),
            Ok(_) => {}
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
        if crc32fast::hash(&payload) != crc {
            return Ok(damaged(offset, "checksum mismatch"));
        }
        let Some((revision, change)) = decode(&payload) else {
            return Ok(damaged(offset, "undecodable record"));
        };
        apply(revision, change)?;
        offset += (HEADER + len) as u64;
    }
}

fn scan(valid_len: u64, end: SegmentEnd) -> SegmentScan {
    SegmentScan { valid_len, end }
}

fn damaged(valid_len: u64, reason: &str) -> SegmentScan {
    scan(
        valid_len,
        SegmentEnd::Damaged {
            reason: format!("{reason} at offset {valid_len}"),
        },
    )
}

/// Reads until `buf` is full or the end of input; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The segment being appended to.
pub(super) struct SegmentWriter {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    first_revision: u64,
    offset: u64,
    preallocate: u64,
}

impl SegmentWriter {
    /// Creates the segment starting at `first_revision`, durably (the directory entry is synced).
    pub(super) fn create(dir: &Path, first_revision: u64, preallocate: u64) -> Result<Self> {
        let path = dir.join(segment_name(first_revision));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        sys::preallocate(&file, preallocate)
            .map_err(|e| StoreError::io(format!("preallocating {}", path.display()), e))?;
        file.sync_all()
            .map_err(|e| StoreError::io(format!("syncing {}", path.display()), e))?;
        sync_dir(dir)?;
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            file,
            path,
            first_revision,
            offset: 0,
            preallocate,
        })
    }

    /// Reopens an existing segment for appending after its `valid_len` bytes of good records,
    /// discarding anything after them (a torn tail) durably.
    pub(super) fn reopen(dir: &Path, first_revision: u64, valid_len: u64, preallocate: u64) -> Result<Self> {
        let path = dir.join(segment_name(first_revision));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let ctx = |what: &str| format!("{what} {}", path.display());
        file.set_len(valid_len)
            .map_err(|e| StoreError::io(ctx("truncating"), e))?;
        sys::preallocate(&file, preallocate).map_err(|e| StoreError::io(ctx("preallocating"), e))?;
        file.sync_all().map_err(|e| StoreError::io(ctx("syncing"), e))?;
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            file,
            path,
            first_revision,
            offset: valid_len,
            preallocate,
        })
    }

    pub(super) fn first_revision(&self) -> u64 {
        self.first_revision
    }

    /// Bytes of records in this segment.
    pub(super) fn len(&self) -> u64 {
        self.offset
    }

    /// Writes `records` after the last ones and makes them durable.
    pub(super) fn append_durable(&mut self, records: &[u8]) -> Result<()> {
        let started = std::time::Instant::now();
        self.file
            .write_all_at(records, self.offset)
            .map_err(|e| StoreError::io(format!("writing {}", self.path.display()), e))?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io(format!("syncing {}", self.path.display()), e))?;
        self.offset += records.len() as u64;
        let took = started.elapsed();
        if took > SLOW_SYNC {
            tracing::warn!(
                ?took,
                bytes = records.len(),
                "slow write-ahead log sync (is the disk overloaded?)"
            );
        }
        Ok(())
    }

    /// Starts the next segment, whose first record will be `first_revision`.
    pub(super) fn rotate(&mut self, first_revision: u64) -> Result<()> {
        // Give back the unused preallocated tail of the finished segment.
        if let Err(e) = self.file.set_len(self.offset).and_then(|()| self.file.sync_all()) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not trim a finished log segment");
        }
        let dir = self.dir.clone();
        *self = SegmentWriter::create(&dir, first_revision, self.preallocate)?;
        Ok(())
    }
}

/// Makes the creation, rename or removal of entries in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

/// The log segments in `dir`, sorted by first revision.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push(first);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let put = Change::Put {
            key: "/registry/pods/ns/a".into(),
            value: Bytes::from_static(b"{\"v\":1}"),
            create_revision: 7,
        };
        let del = Change::Delete { key: "/k".into() };
        let mut buf = Vec::new();
        encode(&mut buf, 9, &put);
        let first_len = buf.len();
        encode(&mut buf, 10, &del);
        assert_eq!(decode(&buf[HEADER..first_len]), Some((9, put)));
        assert_eq!(decode(&buf[first_len + HEADER..]), Some((10, del)));
    }

    #[test]
    fn segment_names_sort_by_revision() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert!(segment_name(9) < segment_name(10));
        assert_eq!(parse_segment_name("wal-x.log"), None);
    }
}
