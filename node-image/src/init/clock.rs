//! The wall clock: from the RTC if the kernel did not already set it, then SNTP (RFC 4330) to
//! the NTP servers DHCP or the config named. One request per server with a short timeout: a
//! node that cannot reach NTP boots anyway with the RTC's time.

use crate::sys;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between 1900-01-01 (NTP era 0) and 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(if m <= 2 { y - 1 } else { y });
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sets the clock from /dev/rtc0 when it still reads before 2020 (the kernel's RTC_HCTOSYS
/// normally did it already). Returns a description for the console.
pub fn from_rtc() -> String {
    if now_unix() > 1_577_836_800 {
        return "clock set by the kernel from the RTC".into();
    }
    let rtc = match std::fs::File::open("/dev/rtc0") {
        Ok(f) => f,
        Err(e) => return format!("no RTC ({e})"),
    };
    match sys::rtc_read(&rtc) {
        Ok(t) => {
            let days = days_from_civil(t.year, t.month, t.day);
            let secs = days * 86400 + i64::from(t.hour * 3600 + t.minute * 60 + t.second);
            match sys::set_realtime(secs, 0) {
                Ok(()) => "clock set from the RTC".into(),
                Err(e) => format!("setting the clock: {e}"),
            }
        }
        Err(e) => format!("reading the RTC: {e}"),
    }
}

/// The transmit time of an SNTP reply, as (Unix seconds, nanoseconds).
pub fn parse_sntp(reply: &[u8]) -> Option<(i64, u32)> {
    if reply.len() < 48 {
        return None;
    }
    let mode = reply[0] & 7;
    let stratum = reply[1];
    if mode != 4 || stratum == 0 || stratum > 15 {
        return None;
    }
    let secs = u64::from(u32::from_be_bytes(reply[40..44].try_into().ok()?));
    let frac = u64::from(u32::from_be_bytes(reply[44..48].try_into().ok()?));
    let unix = secs.checked_sub(NTP_UNIX_OFFSET)?;
    Some((unix as i64, ((frac * 1_000_000_000) >> 32) as u32))
}

/// Asks each server once; sets the clock from the first answer.
pub fn sntp(servers: &[Ipv4Addr]) -> Result<Ipv4Addr, String> {
    let mut last = String::from("no NTP server");
    for &server in servers {
        let attempt = || -> Result<(i64, u32), String> {
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_millis(1500)))
                .map_err(|e| e.to_string())?;
            let mut req = [0u8; 48];
            req[0] = (4 << 3) | 3; // version 4, client
            sock.send_to(&req, SocketAddrV4::new(server, 123))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 128];
            let (n, _) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
            parse_sntp(&buf[..n]).ok_or_else(|| "bad reply".to_string())
        };
        match attempt() {
            Ok((secs, nanos)) => {
                return sys::set_realtime(secs, nanos)
                    .map(|_| server)
                    .map_err(|e| e.to_string());
            }
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(2026, 11, 23), 20780);
    }

    #[test]
    fn sntp_reply() {
        let mut r = [0u8; 48];
        r[0] = (4 << 3) | 4;
        r[1] = 2;
        let t = NTP_UNIX_OFFSET + 1_700_000_000;
        r[40..44].copy_from_slice(&(t as u32).to_be_bytes());
        r[44..48].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        assert_eq!(parse_sntp(&r), Some((1_700_000_000, 500_000_000)));
        r[1] = 0; // kiss-of-death
        assert_eq!(parse_sntp(&r), None);
    }
}
