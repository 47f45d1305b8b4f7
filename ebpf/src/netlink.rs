//! Minimal rtnetlink: read an interface's XDP state, detach a netlink-attached XDP program.
//!
//! aya 0.14 has no public API for either (its netlink code is crate-private), and both are
//! needed to refuse, or to replace, a program someone else attached. The socket is opened in
//! the calling thread's network namespace, like every other operation in this crate.
//!
//! Constants are from include/uapi/linux/{netlink,rtnetlink,if_link}.h.

use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::{FromRawFd as _, OwnedFd},
};

const NETLINK_ROUTE: i32 = 0;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_XDP: u16 = 43;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;

/// `XDP_FLAGS_*_MODE` from include/uapi/linux/if_link.h.
pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub(crate) const XDP_FLAGS_HW_MODE: u32 = 1 << 3;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
/// Big enough for one RTM_NEWLINK without statistics or VF info.
const RECV_BUF: usize = 64 * 1024;

/// What rtnetlink reports about one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkState {
    pub ifindex: u32,
    pub mtu: u32,
    /// The interface's hardware address, when it is an Ethernet-style 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// XDP program ids per attach mode; 0 when none.
    pub drv_prog_id: u32,
    pub skb_prog_id: u32,
    pub hw_prog_id: u32,
}

/// Looks `ifname` up in the calling thread's network namespace.
/// Fails with `ENODEV` when there is no such interface.
pub(crate) fn link_state(ifname: &str) -> io::Result<LinkState> {
    let mut msg = Message::new(RTM_GETLINK, NLM_F_REQUEST, 0);
    let mut name = ifname.as_bytes().to_vec();
    name.push(0);
    msg.attr(IFLA_IFNAME, &name);
    msg.attr(IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    let reply = transact(&msg.finish())?;
    parse_newlink(&reply).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "rtnetlink answered RTM_GETLINK without an RTM_NEWLINK message",
        )
    })
}

/// Removes the program attached in `mode_flag` (one `XDP_FLAGS_*_MODE`) over netlink.
/// Fails with `EBUSY` when that program is held by a bpf_link instead.
pub(crate) fn detach_xdp(ifindex: u32, mode_flag: u32) -> io::Result<()> {
    let ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    let mut msg = Message::new(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, ifindex);
    let mut xdp = Vec::new();
    push_attr(&mut xdp, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    push_attr(&mut xdp, IFLA_XDP_FLAGS, &mode_flag.to_ne_bytes());
    msg.attr(IFLA_XDP | NLA_F_NESTED, &xdp);
    transact(&msg.finish()).map(drop)
}

/// Sends one request and returns the reply's bytes, after turning an `NLMSG_ERROR` with a
/// non-zero code into that errno.
fn transact(request: &[u8]) -> io::Result<Vec<u8>> {
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing else owns it.
    let mut sock = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // write(2)/read(2) on a netlink socket are send/recv to and from the kernel (port 0).
    sock.write_all(request)?;
    let mut buf = vec![0u8; RECV_BUF];
    let len = sock.read(&mut buf)?;
    buf.truncate(len);
    for (kind, payload) in messages(&buf) {
        if kind == NLMSG_ERROR {
            let code = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(-libc::EIO);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
    }
    Ok(buf)
}

/// Iterates `(nlmsg_type, payload)` over the netlink messages in `buf`.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let payload = &rest[NLMSG_HDRLEN..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// Iterates `(type without flags, payload)` over the netlink attributes in `buf`.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(rest.get(..2)?.try_into().ok()?));
        if len < 4 || len > rest.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(rest[2..4].try_into().ok()?) & NLA_TYPE_MASK;
        let payload = &rest[4..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn parse_newlink(buf: &[u8]) -> Option<LinkState> {
    let (_, payload) = messages(buf).find(|&(kind, _)| kind == RTM_NEWLINK)?;
    let ifindex = i32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let mut state = LinkState {
        ifindex: u32::try_from(ifindex).ok()?,
        mtu: 0,
        mac: None,
        drv_prog_id: 0,
        skb_prog_id: 0,
        hw_prog_id: 0,
    };
    for (kind, value) in attrs(payload.get(IFINFOMSG_LEN..)?) {
        match kind {
            IFLA_MTU => state.mtu = read_u32(value)?,
            IFLA_ADDRESS => state.mac = value.try_into().ok(),
            IFLA_XDP => {
                for (kind, value) in attrs(value) {
                    match kind {
                        IFLA_XDP_DRV_PROG_ID => state.drv_prog_id = read_u32(value)?,
                        IFLA_XDP_SKB_PROG_ID => state.skb_prog_id = read_u32(value)?,
                        IFLA_XDP_HW_PROG_ID => state.hw_prog_id = read_u32(value)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(state)
}

fn read_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).expect("netlink attribute over 64 KiB");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// An rtnetlink request: `nlmsghdr`, `ifinfomsg`, then attributes.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16, ifindex: i32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched by finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
                                                    // ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change
        buf.extend_from_slice(&[0, 0, 0, 0]);
        buf.extend_from_slice(&ifindex.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        Self(buf)
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        push_attr(&mut self.0, kind, payload);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len()).expect("netlink message over 4 GiB");
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_newlink_with_nested_xdp() {
        let mut xdp = Vec::new();
        push_attr(&mut xdp, 2, &[1]); // IFLA_XDP_ATTACHED = XDP_ATTACHED_DRV
        push_attr(&mut xdp, IFLA_XDP_DRV_PROG_ID, &42u32.to_ne_bytes());
        let mut msg = Message::new(RTM_NEWLINK, 0, 7);
        msg.attr(IFLA_IFNAME, b"eth0\0");
        msg.attr(IFLA_MTU, &9000u32.to_ne_bytes());
        msg.attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 9]);
        msg.attr(IFLA_XDP | NLA_F_NESTED, &xdp);
        let state = parse_newlink(&msg.finish()).unwrap();
        assert_eq!(
            state,
            LinkState {
                ifindex: 7,
                mtu: 9000,
                mac: Some([2, 0, 0, 0, 0, 9]),
                drv_prog_id: 42,
                skb_prog_id: 0,
                hw_prog_id: 0
            }
        );
    }

    #[test]
    fn truncated_input_yields_nothing() {
        let mut msg = Message::new(RTM_NEWLINK, 0, 7);
        msg.attr(IFLA_MTU, &1500u32.to_ne_bytes());
        let bytes = msg.finish();
        for cut in 0..bytes.len() {
            // Never panics; a cut message is simply not found.
            assert!(parse_newlink(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }
}
