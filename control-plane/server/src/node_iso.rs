//! `keel-server node-iso`: a copy of the node ISO with this cluster's join data baked in.
//!
//! The base ISO carries a 64 KiB config slot (`/boot/config.cpio`, see `boot/README.md`): a
//! newc cpio archive whose first entry is named `keel-config-slot`, at a 2048-byte-aligned
//! offset, which GRUB loads after the initramfs. Writing a new archive holding
//! `etc/keel/node.conf` into the slot gives a node that joins by itself, while the base image
//! stays untouched: nothing else in the ISO changes.

use std::path::Path;

use anyhow::{bail, Context, Result};

const SLOT_SIZE: usize = 64 * 1024;
const SLOT_MARKER: &[u8] = b"keel-config-slot";
const SECTOR: usize = 2048;

/// The `node.conf` a node reads: `key=value` lines.
pub fn node_conf(server: &str, token: &str, ca_hash: &str, extra: &[(String, String)]) -> String {
    let mut out = String::from("# made by keel-server node-iso\n");
    out.push_str(&format!("server={server}\ntoken={token}\nca-hash={ca_hash}\n"));
    for (k, v) in extra {
        out.push_str(&format!("{k}={v}\n"));
    }
    out
}

/// A newc cpio archive with `etc/`, `etc/keel/` and `etc/keel/node.conf`.
pub fn config_archive(conf: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let entries: [(&str, u32, &[u8]); 4] = [
        ("etc", 0o040755, b""),
        ("etc/keel", 0o040755, b""),
        ("etc/keel/node.conf", 0o100600, conf.as_bytes()),
        ("TRAILER!!!", 0, b""),
    ];
    for (ino, (name, mode, data)) in entries.iter().enumerate() {
        let nlink = if *mode & 0o040000 != 0 { 2 } else { 1 };
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            ino + 1,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(&mut out);
        out.extend_from_slice(data);
        pad4(&mut out);
    }
    out
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

/// Finds the config slot in an ISO image: the sector-aligned offset of the slot's archive.
pub fn find_slot(iso: &[u8]) -> Option<usize> {
    (0..iso.len()).step_by(SECTOR).find(|&off| {
        iso.get(off..off + 6) == Some(b"070701")
            && iso.get(off + 110..off + 110 + SLOT_MARKER.len()) == Some(SLOT_MARKER)
    })
}

/// Writes `archive` into the slot of `iso` (in memory).
pub fn patch(iso: &mut [u8], archive: &[u8]) -> Result<()> {
    if archive.len() > SLOT_SIZE {
        bail!(
            "the node configuration ({} bytes) does not fit the ISO's {SLOT_SIZE}-byte slot",
            archive.len()
        );
    }
    let off = find_slot(iso).context("the base ISO has no Keel config slot (build it with `make iso`)")?;
    let slot = iso
        .get_mut(off..off + SLOT_SIZE)
        .context("the config slot runs past the end of the ISO")?;
    slot.fill(0);
    slot[..archive.len()].copy_from_slice(archive);
    Ok(())
}

/// Reads `base`, bakes `conf` in, writes `out`.
pub fn write(base: &Path, out: &Path, conf: &str) -> Result<()> {
    let mut iso = std::fs::read(base).with_context(|| format!("reading the base ISO {}", base.display()))?;
    patch(&mut iso, &config_archive(conf))?;
    let tmp = out.with_extension("iso.tmp");
    std::fs::write(&tmp, &iso).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_iso() -> Vec<u8> {
        let mut iso = vec![0u8; SECTOR * 8 + SLOT_SIZE];
        let mut slot = b"070701".to_vec();
        slot.resize(110, b'0');
        slot.extend_from_slice(SLOT_MARKER);
        iso[SECTOR * 8..SECTOR * 8 + slot.len()].copy_from_slice(&slot);
        iso
    }

    #[test]
    fn archive_is_newc_and_lands_in_the_slot() {
        let conf = node_conf(
            "https://10.0.0.1:9443",
            "abcdef.0123456789abcdef",
            "sha256:00",
            &[],
        );
        let archive = config_archive(&conf);
        assert!(archive.starts_with(b"070701"));
        assert_eq!(archive.len() % 4, 0);
        let text = String::from_utf8_lossy(&archive);
        assert!(
            text.contains("etc/keel/node.conf")
                && text.contains("token=abcdef.0123456789abcdef")
                && text.contains("TRAILER!!!")
        );
        let mut iso = fake_iso();
        let before = iso.len();
        patch(&mut iso, &archive).unwrap();
        assert_eq!(iso.len(), before);
        assert_eq!(&iso[SECTOR * 8..SECTOR * 8 + archive.len()], &archive[..]);
        assert!(find_slot(&iso).is_none(), "the slot marker is replaced");
    }

    #[test]
    fn an_iso_without_a_slot_is_refused() {
        let mut iso = vec![0u8; SECTOR * 4];
        assert!(patch(&mut iso, b"x").is_err());
    }
}
