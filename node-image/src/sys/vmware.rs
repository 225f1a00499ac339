//! VMware guestinfo: reads `guestinfo.*` variables (set in the VM's .vmx or by vSphere as
//! `guestinfo.keel.server = "…"`) through the VMware backdoor I/O port, with no VMware Tools.
//!
//! The backdoor is an `in` instruction on port 0x5658 with a magic number in EAX; the
//! hypervisor intercepts it and answers in the registers. The RPCI channel on top of it
//! (open, send size, send payload 4 bytes at a time, receive size, receive payload, receive
//! status, close) carries text commands such as `info-get guestinfo.keel.server`, answered by
//! `1 <value>` or `0 <error>`.
//!
//! On anything but VMware the port is not intercepted and the instruction would fault, so
//! [`is_vmware`] (CPUID hypervisor vendor "VMwareVMware") must be checked first; [`Channel::open`]
//! refuses to run otherwise; and since a VM can restrict the backdoor (then the instruction
//! faults), PID 1 queries it from a child process (`/init guestinfo`). This cannot run under
//! QEMU; the reply parsing is unit-tested.

use std::io;

const MAGIC: u32 = 0x564D_5868;
const PORT: u32 = 0x5658;
const CMD_MESSAGE: u32 = 30;
const RPCI_PROTOCOL: u32 = 0x4943_5052;
const FLAG_COOKIE: u32 = 0x8000_0000;

const TYPE_OPEN: u32 = 0;
const TYPE_SENDSIZE: u32 = 1;
const TYPE_SENDPAYLOAD: u32 = 2;
const TYPE_RECVSIZE: u32 = 3;
const TYPE_RECVPAYLOAD: u32 = 4;
const TYPE_RECVSTATUS: u32 = 5;
const TYPE_CLOSE: u32 = 6;

const STATUS_SUCCESS: u32 = 0x0001;
const STATUS_DORECV: u32 = 0x0002;

/// True when CPUID reports a hypervisor whose vendor is "VMwareVMware".
pub fn is_vmware() -> bool {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 31) == 0 {
        return false;
    }
    let hv = core::arch::x86_64::__cpuid(0x4000_0000);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&hv.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&hv.ecx.to_le_bytes());
    vendor[8..12].copy_from_slice(&hv.edx.to_le_bytes());
    &vendor == b"VMwareVMware"
}

#[derive(Clone, Copy, Default)]
struct Regs {
    bx: u32,
    cx: u32,
    dx: u32,
    si: u32,
    di: u32,
}

/// One backdoor call.
///
/// # Safety
/// Only valid on VMware (checked by [`is_vmware`]) with I/O permission for the port; elsewhere
/// the `in` instruction faults (SIGSEGV).
unsafe fn backdoor(input: Regs) -> Regs {
    let bx: u64 = u64::from(input.bx);
    let bx_out: u64;
    let (cx, dx, si, di): (u32, u32, u32, u32);
    // SAFETY (for the block): the caller guarantees the hypervisor intercepts this `in`. RBX is
    // reserved by LLVM, so it is swapped with a scratch register around the instruction and
    // restored before the block ends. No memory is touched and the stack is not used.
    unsafe {
        std::arch::asm!(
            "xchg {bx}, rbx",
            "in eax, dx",
            "xchg {bx}, rbx",
            bx = inout(reg) bx => bx_out,
            inout("eax") MAGIC => _,
            inout("ecx") input.cx => cx,
            inout("edx") input.dx => dx,
            inout("esi") input.si => si,
            inout("edi") input.di => di,
            options(nostack),
        );
    }
    Regs {
        bx: bx_out as u32,
        cx,
        dx,
        si,
        di,
    }
}

/// An open RPCI channel.
pub struct Channel {
    id: u32,
    cookie1: u32,
    cookie2: u32,
}

fn err(what: &str) -> io::Error {
    io::Error::other(format!("vmware backdoor: {what} failed"))
}

impl Channel {
    pub fn open() -> io::Result<Channel> {
        if !is_vmware() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not running on VMware",
            ));
        }
        // Access to the port; VMware usually allows it at any privilege, but ask anyway.
        let _ = super::ioperm(u64::from(PORT), 1);
        // SAFETY: we run on VMware (checked above), which intercepts the backdoor port.
        let r = unsafe {
            backdoor(Regs {
                bx: RPCI_PROTOCOL | FLAG_COOKIE,
                cx: (TYPE_OPEN << 16) | CMD_MESSAGE,
                dx: PORT,
                ..Regs::default()
            })
        };
        if (r.cx >> 16) & STATUS_SUCCESS == 0 {
            return Err(err("open"));
        }
        Ok(Channel {
            id: r.dx >> 16,
            cookie1: r.si,
            cookie2: r.di,
        })
    }

    fn call(&self, ty: u32, bx: u32) -> Regs {
        // SAFETY: a Channel exists only after `open` verified we run on VMware.
        unsafe {
            backdoor(Regs {
                bx,
                cx: (ty << 16) | CMD_MESSAGE,
                dx: (self.id << 16) | PORT,
                si: self.cookie1,
                di: self.cookie2,
            })
        }
    }

    /// Sends one RPCI command and returns the reply text.
    pub fn request(&self, command: &str) -> io::Result<String> {
        let bytes = command.as_bytes();
        let r = self.call(TYPE_SENDSIZE, bytes.len() as u32);
        if (r.cx >> 16) & STATUS_SUCCESS == 0 {
            return Err(err("send size"));
        }
        for chunk in bytes.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            let r = self.call(TYPE_SENDPAYLOAD, u32::from_le_bytes(word));
            if (r.cx >> 16) & STATUS_SUCCESS == 0 {
                return Err(err("send payload"));
            }
        }
        let r = self.call(TYPE_RECVSIZE, 0);
        if (r.cx >> 16) & STATUS_SUCCESS == 0 {
            return Err(err("receive size"));
        }
        if (r.cx >> 16) & STATUS_DORECV == 0 {
            return Ok(String::new());
        }
        let size = r.bx as usize;
        if size > 64 * 1024 {
            return Err(err("reply size"));
        }
        let mut reply = Vec::with_capacity(size + 4);
        while reply.len() < size {
            let r = self.call(TYPE_RECVPAYLOAD, STATUS_SUCCESS);
            if (r.cx >> 16) & STATUS_SUCCESS == 0 {
                return Err(err("receive payload"));
            }
            reply.extend_from_slice(&r.bx.to_le_bytes());
        }
        reply.truncate(size);
        let _ = self.call(TYPE_RECVSTATUS, STATUS_SUCCESS);
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    /// `info-get guestinfo.<key>`: the value, or `None` when the variable is not set.
    pub fn guestinfo(&self, key: &str) -> io::Result<Option<String>> {
        let reply = self.request(&format!("info-get guestinfo.{key}"))?;
        Ok(parse_reply(&reply))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = self.call(TYPE_CLOSE, 0);
    }
}

/// An RPCI reply is `1 <value>` on success and `0 <message>` on failure.
pub fn parse_reply(reply: &str) -> Option<String> {
    let value = reply
        .strip_prefix("1 ")
        .or_else(|| (reply == "1").then_some(""))?;
    let value = value.trim_end_matches('\0').trim();
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_reply;

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply("1 https://10.0.0.1:9443").as_deref(),
            Some("https://10.0.0.1:9443")
        );
        assert_eq!(
            parse_reply("1 abcdef.0123456789abcdef\0").as_deref(),
            Some("abcdef.0123456789abcdef")
        );
        assert_eq!(parse_reply("0 No value found"), None);
        assert_eq!(parse_reply("1 "), None);
        assert_eq!(parse_reply(""), None);
    }

    #[test]
    fn qemu_is_not_vmware() {
        // The test host (or its CI VM) is not VMware; if it ever is, this is still true there.
        if std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").is_ok_and(|v| !v.contains("VMware")) {
            assert!(!super::is_vmware());
        }
    }
}
