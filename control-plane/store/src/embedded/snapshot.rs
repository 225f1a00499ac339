//! Snapshots: the live key space at one revision, so the log before it can be deleted.
//!
//! A snapshot file `snap-<revision, 20 digits>.snap` is written whole to a temporary file,
//! synced, renamed into place and the directory synced: a crash leaves either the old snapshot or
//! the complete new one, never a partial file under the final name. Only once the new snapshot is
//! durable are the log segments it covers and older snapshots removed.
//!
//! ```text
//! file  = magic "KEELSNP1" | revision: u64 | count: u64 | entry* | crc32(everything before): u32
//! entry = key_len: u32 | key | create_revision: u64 | mod_revision: u64 | value_len: u32 | value
//! ```
//! (integers little endian). The whole file is checked against its checksum before it is used.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::wal;
use crate::{KeyValue, Result, StoreError};

const MAGIC: &[u8; 8] = b"KEELSNP1";

pub(super) fn snapshot_name(revision: u64) -> String {
    format!("snap-{revision:020}.snap")
}

pub(super) fn parse_snapshot_name(name: &str) -> Option<u64> {
    name.strip_prefix("snap-")?.strip_suffix(".snap")?.parse().ok()
}

/// Writes the snapshot of `items` at `revision` into `dir`, durably.
pub(super) fn write(dir: &Path, revision: u64, items: &[KeyValue]) -> Result<PathBuf> {
    let path = dir.join(snapshot_name(revision));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(revision)));
    let ctx = |what: &str| format!("{what} snapshot {}", tmp.display());
    let file = File::create(&tmp).map_err(|e| StoreError::io(ctx("creating"), e))?;
    let mut out = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let write_all = |out: &mut CrcWriter, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|e| StoreError::io(ctx("writing"), e))
    };
    write_all(&mut out, MAGIC)?;
    write_all(&mut out, &revision.to_le_bytes())?;
    write_all(&mut out, &(items.len() as u64).to_le_bytes())?;
    for kv in items {
        write_all(&mut out, &len32(kv.key.len()).to_le_bytes())?;
        write_all(&mut out, kv.key.as_bytes())?;
        write_all(&mut out, &kv.create_revision.to_le_bytes())?;
        write_all(&mut out, &kv.mod_revision.to_le_bytes())?;
        write_all(&mut out, &len32(kv.value.len()).to_le_bytes())?;
        write_all(&mut out, &kv.value)?;
    }
    let crc = out.crc.clone().finalize();
    write_all(&mut out, &crc.to_le_bytes())?;
    let file = out
        .inner
        .into_inner()
        .map_err(|e| StoreError::io(ctx("writing"), e.into_error()))?;
    file.sync_all().map_err(|e| StoreError::io(ctx("syncing"), e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io(ctx("renaming"), e))?;
    wal::sync_dir(dir)?;
    Ok(path)
}

fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads and verifies the snapshot at `path`: its revision and live items.
pub(super) fn read(path: &Path) -> Result<(u64, Vec<KeyValue>)> {
    let data =
        fs::read(path).map_err(|e| StoreError::io(format!("reading snapshot {}", path.display()), e))?;
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((body, crc)) = data.split_last_chunk::<4>() else {
        return Err(corrupt("too short"));
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = Reader(body);
    if r.take(8) != Some(MAGIC.as_slice()) {
        return Err(corrupt("not a snapshot file"));
    }
    let truncated = || corrupt("truncated entry");
    let revision = r.u64().ok_or_else(truncated)?;
    let count = r.u64().ok_or_else(truncated)?;
    let mut items = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
    for _ in 0..count {
        let key_len = r.u32().ok_or_else(truncated)?;
        let key = r.take(key_len as usize).ok_or_else(truncated)?;
        let key: Arc<str> = std::str::from_utf8(key)
            .map_err(|_| corrupt("key is not UTF-8"))?
            .into();
        let create_revision = r.u64().ok_or_else(truncated)?;
        let mod_revision = r.u64().ok_or_else(truncated)?;
        let value_len = r.u32().ok_or_else(truncated)?;
        let value = Bytes::copy_from_slice(r.take(value_len as usize).ok_or_else(truncated)?);
        items.push(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        });
    }
    if !r.0.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok((revision, items))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

struct CrcWriter {
    inner: BufWriter<File>,
    crc: crc32fast::Hasher,
}

impl Write for CrcWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The snapshots in `dir`, sorted by revision.
pub(super) fn list(dir: &Path) -> Result<Vec<u64>> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        if let Some(rev) = entry.file_name().to_str().and_then(parse_snapshot_name) {
            found.push(rev);
        }
    }
    found.sort_unstable();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let items = vec![
            KeyValue {
                key: "/a".into(),
                value: Bytes::from_static(b"one"),
                create_revision: 1,
                mod_revision: 3,
            },
            KeyValue {
                key: "/b".into(),
                value: Bytes::new(),
                create_revision: 2,
                mod_revision: 2,
            },
        ];
        let path = write(dir.path(), 3, &items).unwrap();
        assert_eq!(read(&path).unwrap(), (3, items));
        assert_eq!(list(dir.path()).unwrap(), vec![3]);

        let mut data = fs::read(&path).unwrap();
        data[20] ^= 0xff;
        fs::write(&path, &data).unwrap();
        assert!(matches!(read(&path), Err(StoreError::Corrupt { .. })));
    }
}
