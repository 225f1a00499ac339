//! Unpacking one image layer into its own directory, in the form overlayfs reads as a lower
//! layer: OCI whiteouts become overlayfs whiteouts.
//!
//! * `dir/.wh.name` (name deleted by this layer) → a character device `dir/name` with number
//!   0:0, overlayfs' whiteout;
//! * `dir/.wh..wh..opq` (dir replaced whole) → the `trusted.overlay.opaque=y` xattr on `dir`.
//!
//! Each layer is unpacked once into `layers/<digest>` and shared by every image and container
//! that uses it; containers stack them read-only under a per-container upper directory. Entries
//! whose path leaves the layer (`..`, absolute links followed by tar) are refused by the tar
//! crate's `unpack_in`; ownership and modes are kept (the agent runs as root).
//!
//! gzip (and uncompressed) layers are supported; zstd layers are refused with a clear error —
//! a pure-Rust zstd decoder would cost more binary than the lab needs today.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::sys;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: {source}")]
    Io {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {0} is zstd-compressed; this node unpacks gzip and plain tar layers only")]
    Zstd(String),
    #[error("layer {layer}: entry {path:?} leaves the layer")]
    Escape { layer: String, path: String },
}

/// What one unpack did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

/// Detects the compression from the first bytes and unpacks the layer file into `dest`.
pub fn unpack_layer_file(blob: &Path, dest: &Path) -> Result<Stats, UnpackError> {
    let name = blob
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let io_err = |source| UnpackError::Io {
        layer: name.clone(),
        source,
    };
    let mut f = BufReader::new(File::open(blob).map_err(io_err)?);
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut f, &mut magic).map_err(io_err)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let stream = head.chain(f);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        unpack(flate2::read::MultiGzDecoder::new(stream), dest, &name)
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Err(UnpackError::Zstd(name))
    } else {
        unpack(stream, dest, &name)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A layer path made relative and checked: no `..`, no root.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Unpacks an uncompressed tar stream into `dest` (which is created).
pub fn unpack(reader: impl Read, dest: &Path, layer: &str) -> Result<Stats, UnpackError> {
    let io_err = |source| UnpackError::Io {
        layer: layer.to_string(),
        source,
    };
    fs::create_dir_all(dest).map_err(io_err)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    let mut stats = Stats::default();
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let raw = entry.path().map_err(io_err)?.into_owned();
        let Some(rel) = relative(&raw) else {
            return Err(UnpackError::Escape {
                layer: layer.to_string(),
                path: raw.display().to_string(),
            });
        };
        stats.entries += 1;
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(deleted) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
            fs::create_dir_all(&parent).map_err(io_err)?;
            if file_name == OPAQUE {
                sys::setxattr(&parent, "trusted.overlay.opaque", b"y").map_err(io_err)?;
                stats.opaque_dirs += 1;
            } else if !deleted.is_empty() {
                let target = parent.join(deleted);
                remove_any(&target).map_err(io_err)?;
                sys::mknod_char(&target, 0, 0, 0).map_err(io_err)?;
                stats.whiteouts += 1;
            }
            continue;
        }
        if !entry.unpack_in(dest).map_err(io_err)? {
            return Err(UnpackError::Escape {
                layer: layer.to_string(),
                path: raw.display().to_string(),
            });
        }
    }
    Ok(stats)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o750);
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                }
            }
            // Raw names, so that the tests can also write what the tar crate refuses to.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, data.unwrap_or(&[])).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn files_and_overlay_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("l");
        let tar = layer(&[
            ("./etc/", None),
            ("./etc/hostname", Some(b"x\n")),
            ("bin/.wh.old", Some(b"")),
            ("var/cache/.wh..wh..opq", Some(b"")),
            ("var/cache/new", Some(b"n")),
        ]);
        let blob = dir.path().join("blob");
        fs::write(&blob, gz(&tar)).unwrap();
        let stats = unpack_layer_file(&blob, &dest).unwrap();
        assert_eq!(
            stats,
            Stats {
                entries: 5,
                whiteouts: 1,
                opaque_dirs: 1
            }
        );
        assert_eq!(fs::read(dest.join("etc/hostname")).unwrap(), b"x\n");
        let m = fs::metadata(dest.join("etc/hostname")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o750);
        let w = fs::symlink_metadata(dest.join("bin/old")).unwrap();
        assert!(w.file_type().is_char_device(), "whiteout is a char device");
        assert_eq!(w.rdev(), 0);
        assert!(!dest.join("bin/.wh.old").exists());
        assert_eq!(
            sys::getxattr(&dest.join("var/cache"), "trusted.overlay.opaque").unwrap(),
            b"y"
        );
        assert_eq!(fs::read(dest.join("var/cache/new")).unwrap(), b"n");
    }

    #[test]
    fn plain_tar_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("plain");
        fs::write(&blob, layer(&[("a", Some(b"1"))])).unwrap();
        unpack_layer_file(&blob, &dir.path().join("p")).unwrap();
        assert_eq!(fs::read(dir.path().join("p/a")).unwrap(), b"1");

        fs::write(&blob, layer(&[("../evil", Some(b"1"))])).unwrap();
        let e = unpack_layer_file(&blob, &dir.path().join("q")).unwrap_err();
        assert!(matches!(e, UnpackError::Escape { .. }), "{e}");
        assert!(!dir.path().join("evil").exists());

        fs::write(&blob, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        assert!(matches!(
            unpack_layer_file(&blob, &dir.path().join("z")),
            Err(UnpackError::Zstd(_))
        ));
        fs::write(
            &blob,
            gz(b"not a tar at all, just some bytes that are not 512 long"),
        )
        .unwrap();
        assert!(unpack_layer_file(&blob, &dir.path().join("g")).is_err());
    }
}
