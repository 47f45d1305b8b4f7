//! The AF_XDP socket: creation, bind (with zero-copy fallback), the four rings as batched
//! frame moves, wakeups, statistics and busy-poll.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use crate::if_xdp::*;
use crate::ring::{Consumer, Producer, RingMap};
use crate::sys::{self, context};
use crate::umem::{Frame, Layout, Registration, Umem};
use crate::Result;

/// Whether to bind in zero-copy mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Try `XDP_ZEROCOPY`; fall back to `XDP_COPY` if the driver refuses (veth always does).
    #[default]
    Auto,
    /// Fail unless zero-copy works.
    Require,
    /// Always `XDP_COPY`.
    Off,
}

/// Per-socket settings; UMEM-side ring sizes are in [`UmemConfig`](crate::UmemConfig).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketConfig {
    /// RX ring size (power of two).
    pub rx_size: u32,
    /// TX ring size (power of two).
    pub tx_size: u32,
    /// Zero-copy policy.
    pub zero_copy: ZeroCopy,
    /// `XDP_USE_NEED_WAKEUP`: only call into the kernel when a ring asks for it.
    pub need_wakeup: bool,
    /// `XDP_USE_SG`: multi-buffer packets (needs an `xdp.frags` program for RX).
    pub multi_buffer: bool,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            rx_size: 2048,
            tx_size: 2048,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            multi_buffer: false,
        }
    }
}

/// `XDP_STATISTICS` (v2 layout; fields a pre-5.9 kernel does not report read 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Dropped for reasons other than invalid descriptors (e.g. no `XDP_USE_SG` for a
    /// multi-buffer packet).
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the TX ring.
    pub tx_invalid_descs: u64,
    /// Dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a packet arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the TX ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

const PERM_HINT: &str = "; AF_XDP needs CAP_NET_RAW and CAP_NET_ADMIN (or root)";

/// An AF_XDP socket bound to one (interface, queue), owning its fill, completion, RX and TX
/// rings. Frames move in and out of the rings; see the crate docs for the ownership rule.
#[derive(Debug)]
pub struct Socket {
    fill: RingMap<u64>,
    fill_cur: Producer,
    comp: RingMap<u64>,
    comp_cur: Consumer,
    rx: RingMap<xdp_desc>,
    rx_cur: Consumer,
    tx: RingMap<xdp_desc>,
    tx_cur: Producer,
    layout: Layout,
    need_wakeup: bool,
    zero_copy: bool,
    ifname: String,
    queue_id: u32,
    _reg: Registration,
    // Last, so it is closed after the rings are unmapped.
    fd: OwnedFd,
}

// SAFETY: the raw pointers in the rings point into mappings owned by this socket; the cursors
// are the rings' only userspace producer/consumer and move with it. Nothing is thread-bound.
unsafe impl Send for Socket {}

impl Socket {
    /// Creates a socket, registers `umem` on it (first socket of the UMEM), maps the rings and
    /// binds to `ifname` queue `queue_id` (in the calling thread's network namespace).
    pub fn new(ifname: &str, queue_id: u32, umem: &Umem, cfg: SocketConfig) -> Result<Socket> {
        let at = format!("AF_XDP socket on {ifname} queue {queue_id}");
        for (name, v) in [("rx_size", cfg.rx_size), ("tx_size", cfg.tx_size)] {
            if !v.is_power_of_two() {
                let msg = format!("{at}: {name} {v} must be a power of two");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
            }
        }
        let ifindex = ifindex(ifname)?;
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT) => "; the kernel lacks CONFIG_XDP_SOCKETS",
                Some(libc::EPERM | libc::EACCES) => PERM_HINT,
                _ => "",
            };
            return Err(context(e, format_args!("creating {at}"), hint));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let reg = umem.register(raw).map_err(|e| context(e, &at, ""))?;

        let ucfg = umem.config();
        let sizes = [
            (XDP_UMEM_FILL_RING, ucfg.fill_size, "fill"),
            (XDP_UMEM_COMPLETION_RING, ucfg.comp_size, "completion"),
            (XDP_RX_RING, cfg.rx_size, "rx"),
            (XDP_TX_RING, cfg.tx_size, "tx"),
        ];
        for (opt, size, name) in sizes {
            sys::setsockopt(raw, SOL_XDP, opt, &size).map_err(|e| {
                context(
                    e,
                    format_args!("{at}: sizing the {name} ring to {size}"),
                    "",
                )
            })?;
        }
        // SAFETY: `xdp_mmap_offsets` is plain integers.
        let (off, len) =
            unsafe { sys::getsockopt::<xdp_mmap_offsets>(raw, SOL_XDP, XDP_MMAP_OFFSETS) }
                .map_err(|e| context(e, format_args!("{at}: XDP_MMAP_OFFSETS"), ""))?;
        if len != size_of::<xdp_mmap_offsets>() {
            let msg =
                format!("{at}: kernel too old (no ring flags in XDP_MMAP_OFFSETS; need 5.4+)");
            return Err(io::Error::new(io::ErrorKind::Unsupported, msg));
        }
        let at_ref = &at;
        let map_err =
            |name| move |e| context(e, format_args!("{at_ref}: mapping the {name} ring"), "");
        let fill = RingMap::map(raw, &off.fr, ucfg.fill_size, XDP_UMEM_PGOFF_FILL_RING)
            .map_err(map_err("fill"))?;
        let comp = RingMap::map(raw, &off.cr, ucfg.comp_size, XDP_UMEM_PGOFF_COMPLETION_RING)
            .map_err(map_err("completion"))?;
        let rx = RingMap::map(raw, &off.rx, cfg.rx_size, XDP_PGOFF_RX_RING as u64)
            .map_err(map_err("rx"))?;
        let tx = RingMap::map(raw, &off.tx, cfg.tx_size, XDP_PGOFF_TX_RING as u64)
            .map_err(map_err("tx"))?;

        let mut flags = 0;
        if cfg.need_wakeup {
            flags |= XDP_USE_NEED_WAKEUP;
        }
        if cfg.multi_buffer {
            flags |= XDP_USE_SG;
        }
        let bound = match cfg.zero_copy {
            ZeroCopy::Require => bind(raw, ifindex, queue_id, flags | XDP_ZEROCOPY),
            ZeroCopy::Off => bind(raw, ifindex, queue_id, flags | XDP_COPY),
            ZeroCopy::Auto => bind(raw, ifindex, queue_id, flags | XDP_ZEROCOPY)
                .or_else(|_| bind(raw, ifindex, queue_id, flags | XDP_COPY)),
        };
        bound.map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) => {
                    "; the queue probably does not exist (see `ethtool -l`; a veth has one \
                     queue unless created with numrxqueues/numtxqueues)"
                }
                Some(libc::EBUSY) => {
                    "; another AF_XDP socket is already bound to this queue (the kernel frees \
                     a closed socket's queue asynchronously, ~20 ms here: retry after a close)"
                }
                Some(libc::EOPNOTSUPP) if cfg.zero_copy == ZeroCopy::Require => {
                    "; the driver has no AF_XDP zero-copy support (veth never has): use \
                     ZeroCopy::Auto or ZeroCopy::Off"
                }
                Some(libc::EOPNOTSUPP) if cfg.multi_buffer => {
                    "; the driver does not support multi-buffer AF_XDP (XDP_USE_SG) in this mode"
                }
                Some(libc::EPERM | libc::EACCES) => PERM_HINT,
                _ => "",
            };
            context(
                e,
                format_args!("binding {at} ({:?} zero-copy)", cfg.zero_copy),
                hint,
            )
        })?;

        // SAFETY: `xdp_options` is plain integers.
        let (opts, _) = unsafe { sys::getsockopt::<xdp_options>(raw, SOL_XDP, XDP_OPTIONS) }
            .map_err(|e| context(e, format_args!("{at}: XDP_OPTIONS"), ""))?;
        Ok(Socket {
            fill_cur: fill.producer(),
            comp_cur: comp.consumer(),
            rx_cur: rx.consumer(),
            tx_cur: tx.producer(),
            fill,
            comp,
            rx,
            tx,
            layout: umem.layout(),
            need_wakeup: cfg.need_wakeup,
            zero_copy: opts.flags & XDP_OPTIONS_ZEROCOPY != 0,
            ifname: ifname.to_owned(),
            queue_id,
            _reg: reg,
            fd,
        })
    }

    /// The socket fd, for the XSKMAP.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether the kernel bound in zero-copy mode (read back from `XDP_OPTIONS`).
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Interface name given at creation.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Queue id given at creation.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// Moves as many frames as fit from the front of `frames` onto the fill ring.
    ///
    /// # Panics
    /// If a frame belongs to another UMEM.
    pub fn fill(&mut self, frames: &mut Vec<Frame>) -> usize {
        let n = self.fill_cur.reserve(clamp(frames.len()));
        for (i, frame) in (0..n).zip(frames.iter()) {
            let addr = self.layout.chunk_addr(frame);
            self.fill.write(self.fill_cur.slot(i), addr);
        }
        self.fill_cur.submit(n);
        frames.drain(..n as usize);
        n as usize
    }

    /// Free slots on the fill ring.
    pub fn fill_free(&self) -> u32 {
        self.fill_cur.free()
    }

    /// Moves up to `max` received frames onto the end of `out`; returns how many.
    pub fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = self.rx_cur.peek(clamp(max));
        out.reserve(n as usize);
        let mut bad = None;
        for i in 0..n {
            let d = self.rx.read(self.rx_cur.slot(i));
            match self.layout.frame(d.addr, d.len, d.options) {
                Some(frame) => out.push(frame),
                None => bad = Some(d.addr),
            }
        }
        // Release before any panic, so a caught panic cannot yield the same frames twice.
        self.rx_cur.release(n);
        if let Some(addr) = bad {
            panic!("kernel returned RX address {addr:#x} outside the UMEM");
        }
        n as usize
    }

    /// Moves as many frames as fit from the front of `frames` onto the TX ring, in order.
    /// Each frame sends `offset..offset + len` of its chunk, with its options.
    ///
    /// # Panics
    /// If a frame belongs to another UMEM or its data overruns the chunk.
    pub fn send(&mut self, frames: &mut Vec<Frame>) -> usize {
        let n = self.tx_cur.reserve(clamp(frames.len()));
        for (i, frame) in (0..n).zip(frames.iter()) {
            let addr = self.layout.desc_addr(frame);
            let desc = xdp_desc {
                addr,
                len: frame.len(),
                options: frame.options(),
            };
            self.tx.write(self.tx_cur.slot(i), desc);
        }
        self.tx_cur.submit(n);
        frames.drain(..n as usize);
        n as usize
    }

    /// Free slots on the TX ring.
    pub fn tx_free(&self) -> u32 {
        self.tx_cur.free()
    }

    /// Descriptors on the TX ring that the kernel has not taken yet: what a
    /// [`kick_tx`](Self::kick_tx) would make it send. Frames it took but has not completed
    /// need no kick.
    pub fn tx_unsent(&self) -> u32 {
        self.tx_cur.pending()
    }

    /// Moves up to `max` transmitted frames back onto the end of `out`, reset to the full
    /// chunk (offset 0, len `chunk_size`, no options).
    pub fn complete(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = self.comp_cur.peek(clamp(max));
        out.reserve(n as usize);
        let mut bad = None;
        for i in 0..n {
            let addr = self.comp.read(self.comp_cur.slot(i));
            match self.layout.frame(addr, self.layout.chunk_size(), 0) {
                Some(mut frame) => {
                    frame.set(0, self.layout.chunk_size());
                    out.push(frame);
                }
                None => bad = Some(addr),
            }
        }
        // Release before any panic, as in `recv`.
        self.comp_cur.release(n);
        if let Some(addr) = bad {
            panic!("kernel returned completion address {addr:#x} outside the UMEM");
        }
        n as usize
    }

    /// Whether TX needs a [`kick_tx`](Self::kick_tx) (always true without `need_wakeup`).
    pub fn needs_wakeup_tx(&self) -> bool {
        !self.need_wakeup || self.tx.needs_wakeup()
    }

    /// Whether RX needs a [`wake_rx`](Self::wake_rx) after filling (always true without
    /// `need_wakeup`).
    pub fn needs_wakeup_fill(&self) -> bool {
        !self.need_wakeup || self.fill.needs_wakeup()
    }

    /// `sendto(MSG_DONTWAIT)`: makes the kernel process the TX ring. In copy mode one call
    /// sends a bounded batch (32 by default), so kick again while frames remain. EAGAIN,
    /// EBUSY and ENOBUFS mean "try again later" and are not errors.
    pub fn kick_tx(&self) -> Result<()> {
        let fd = self.fd();
        // SAFETY: a zero-length send with no buffer and no address; the kernel reads nothing.
        let rc = unsafe { libc::sendto(fd, ptr::null(), 0, libc::MSG_DONTWAIT, ptr::null(), 0) };
        self.transient_ok(rc, "kicking TX (sendto)")
    }

    /// `recvfrom(MSG_DONTWAIT)`: lets the kernel refill/drive RX when the fill ring asks.
    pub fn wake_rx(&self) -> Result<()> {
        let fd = self.fd();
        let (buf, addr, len) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
        // SAFETY: a zero-length receive with no buffer and no address; the kernel writes
        // nothing.
        let rc = unsafe { libc::recvfrom(fd, buf, 0, libc::MSG_DONTWAIT, addr, len) };
        self.transient_ok(rc, "waking RX (recvfrom)")
    }

    fn transient_ok(&self, rc: isize, what: &str) -> Result<()> {
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR) => Ok(()),
            Some(libc::ENETDOWN) => Err(context(e, self.at(what), "; bring the interface up")),
            _ => Err(context(e, self.at(what), "")),
        }
    }

    fn at(&self, what: &str) -> String {
        format!(
            "AF_XDP socket on {} queue {}: {what}",
            self.ifname, self.queue_id
        )
    }

    /// Waits up to `timeout_ms` (-1: forever) for RX readiness; `Ok(false)` on timeout or
    /// signal.
    pub fn poll_rx(&self, timeout_ms: i32) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, writable pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(context(e, self.at("poll"), ""));
        }
        Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// Reads the kernel's `XDP_STATISTICS` counters.
    pub fn statistics(&self) -> Result<XdpStatistics> {
        // SAFETY: `xdp_statistics` is plain integers.
        let (s, _) =
            unsafe { sys::getsockopt::<xdp_statistics>(self.fd(), SOL_XDP, XDP_STATISTICS) }
                .map_err(|e| context(e, self.at("XDP_STATISTICS"), ""))?;
        Ok(XdpStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Enables preferred busy polling: `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL = usecs`,
    /// `SO_BUSY_POLL_BUDGET = budget`. Pair with the netdev's `napi_defer_hard_irqs` and
    /// `gro_flush_timeout`.
    pub fn set_busy_poll(&self, usecs: u32, budget: u16) -> Result<()> {
        let opts = [
            (SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
            (SO_BUSY_POLL, usecs as libc::c_int, "SO_BUSY_POLL"),
            (
                SO_BUSY_POLL_BUDGET,
                libc::c_int::from(budget),
                "SO_BUSY_POLL_BUDGET",
            ),
        ];
        for (opt, val, name) in opts {
            sys::setsockopt(self.fd(), libc::SOL_SOCKET, opt, &val).map_err(|e| {
                let hint = match e.raw_os_error() {
                    Some(libc::EPERM) => {
                        "; raising busy-poll time or budget above the current value needs \
                         CAP_NET_ADMIN"
                    }
                    Some(libc::ENOPROTOOPT) => {
                        "; the kernel lacks busy polling (5.11+, CONFIG_NET_RX_BUSY_POLL)"
                    }
                    Some(libc::EINVAL) => "; value out of range",
                    _ => "",
                };
                context(e, self.at(&format!("setting {name} = {val}")), hint)
            })?;
        }
        Ok(())
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn ifindex(ifname: &str) -> Result<u32> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::NotFound, msg);
    let name = CString::new(ifname).map_err(|_| bad(format!("bad interface name {ifname:?}")))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        let e = io::Error::last_os_error();
        let msg = format!("network interface {ifname:?}: {e} (not in this network namespace?)");
        return Err(io::Error::new(io::ErrorKind::NotFound, msg));
    }
    Ok(idx)
}

fn bind(fd: RawFd, ifindex: u32, queue_id: u32, flags: u16) -> Result<()> {
    let sa = sockaddr_xdp {
        sxdp_family: AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue_id,
        sxdp_shared_umem_fd: 0,
    };
    let len = size_of::<sockaddr_xdp>() as libc::socklen_t;
    // SAFETY: `sa` is a valid `sockaddr_xdp` of `len` bytes; the kernel copies it.
    let rc = unsafe { libc::bind(fd, ptr::from_ref(&sa).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
