//! Ethernet addresses and the framing QEMU's `-netdev socket` uses on a TCP stream: a 4-byte
//! big-endian length followed by that many bytes of Ethernet frame (no FCS).

use std::fmt;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame we accept. QEMU's own network buffer is 4 KiB + 64 KiB (virtio-net with
/// offloads can hand over 64 KiB GSO frames); anything longer is a broken peer.
pub const MAX_FRAME_LEN: usize = 4096 + 65536;

/// The shortest frame that carries both addresses and the EtherType.
pub const MIN_FRAME_LEN: usize = 14;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group addresses (broadcast and multicast) have the low bit of the first octet set.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Destination address of a frame (first six bytes), if the frame is long enough.
    pub fn destination(frame: &[u8]) -> Option<MacAddr> {
        frame.get(0..6).and_then(|b| b.try_into().ok()).map(MacAddr)
    }

    /// Source address of a frame (bytes 6..12), if the frame is long enough.
    pub fn source(frame: &[u8]) -> Option<MacAddr> {
        frame.get(6..12).and_then(|b| b.try_into().ok()).map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not six colon-separated hex octets.
#[derive(Debug, thiserror::Error)]
#[error("not a MAC address (want six hex octets like 52:54:00:aa:00:01): {0:?}")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for slot in out.iter_mut() {
            let part = parts.next().ok_or_else(|| BadMac(s.to_owned()))?;
            if part.len() != 2 {
                return Err(BadMac(s.to_owned()));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| BadMac(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.to_owned()));
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads one length-prefixed frame. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit"),
        ));
    }
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// Writes one length-prefixed frame in a single write, so frames never interleave.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too long"))?;
    let mut buf = Vec::with_capacity(4 + frame.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(frame);
    w.write_all(&buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: MacAddr = "52:54:00:AA:00:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:aa:00:0f");
        assert!(!mac.is_group());
        assert!(MacAddr::BROADCAST.is_group());
        for bad in [
            "",
            "52:54:00:aa:00",
            "52:54:00:aa:00:01:02",
            "zz:54:00:aa:00:01",
            "525:4:00:aa:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"0123456789abcdef").await.unwrap();
        assert_eq!(&buf[..4], &16u32.to_be_bytes());
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap(), b"0123456789abcdef");
        assert!(read_frame(&mut r).await.unwrap().is_none());

        let huge = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let mut r = &huge[..];
        assert!(read_frame(&mut r).await.is_err());
    }
}
