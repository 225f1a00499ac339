//! Writing key material: atomically (temp file + rename, so a crash never leaves half a key) and
//! with the final permissions from the start (a key is never world-readable, not even briefly).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io = |action: &'static str| {
        move |source| Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating"))?;
    f.write_all(contents).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))?;
    drop(f);
    // The umask may have narrowed the mode; make it exact.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
    fs::rename(&tmp, path).map_err(io("renaming into place"))?;
    Ok(())
}

pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::Io {
        action: "creating directory",
        path: path.to_path_buf(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| Error::Io {
        action: "chmod",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file, `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}
