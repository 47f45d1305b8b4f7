//! UMEM: the packet buffer area shared with the kernel, its free list, and `Frame`, the owned
//! token for one chunk.

use std::io;
use std::os::fd::RawFd;
use std::slice;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;

use crate::if_xdp::{xdp_umem_reg, SOL_XDP, XDP_PACKET_HEADROOM, XDP_PKT_CONTD, XDP_UMEM_REG};
use crate::sys::{self, Mmap};
use crate::Result;

/// Geometry of a UMEM. The kernel puts received data at chunk offset
/// `XDP_PACKET_HEADROOM (256) + headroom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemConfig {
    /// Number of chunks.
    pub frame_count: u32,
    /// Chunk size: 2048 or 4096 (Linux 6.18 rejects larger chunks in aligned mode).
    pub chunk_size: u32,
    /// Extra headroom before RX data. The default 220 makes 256 + 220 + a 36-byte AoE header
    /// put the ATA payload at chunk offset 512.
    pub headroom: u32,
    /// Fill ring size (power of two).
    pub fill_size: u32,
    /// Completion ring size (power of two).
    pub comp_size: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        UmemConfig {
            frame_count: 4096,
            chunk_size: 4096,
            headroom: 220,
            fill_size: 2048,
            comp_size: 2048,
        }
    }
}

impl UmemConfig {
    /// Chunk offset at which the kernel writes received packets.
    pub fn rx_offset(&self) -> u32 {
        XDP_PACKET_HEADROOM + self.headroom
    }

    fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.chunk_size != 2048 && self.chunk_size != 4096 {
            return fail(format!(
                "UMEM chunk_size {} must be 2048 or 4096",
                self.chunk_size
            ));
        }
        if self.frame_count == 0 {
            return fail("UMEM frame_count must be > 0".into());
        }
        if self.rx_offset() >= self.chunk_size {
            return fail(format!(
                "UMEM headroom {} leaves no room in a {}-byte chunk (256 + headroom < chunk_size)",
                self.headroom, self.chunk_size
            ));
        }
        for (name, v) in [("fill_size", self.fill_size), ("comp_size", self.comp_size)] {
            if !v.is_power_of_two() {
                return fail(format!("UMEM {name} {v} must be a power of two"));
            }
        }
        Ok(())
    }
}

/// Exclusive ownership of one UMEM chunk, plus the packet inside it.
///
/// Not `Clone`: whoever holds the `Frame` owns the chunk. Handing it to a ring moves it; the
/// kernel gives it back through RX or completion. Read and write its bytes through
/// [`Umem::data`], [`Umem::data_mut`] and [`Umem::chunk_mut`].
#[must_use = "dropping a Frame loses its UMEM chunk until the Umem is dropped"]
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    addr: u64,
    offset: u32,
    len: u32,
    options: u32,
    umem: u32,
}

impl Frame {
    /// Address of the chunk base inside the UMEM.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Offset of the packet data inside the chunk.
    pub fn offset(&self) -> u32 {
        self.offset
    }
    /// Packet data length.
    pub fn len(&self) -> u32 {
        self.len
    }
    /// Whether the packet data is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Descriptor options (`XDP_PKT_CONTD` for all but the last fragment of a packet).
    pub fn options(&self) -> u32 {
        self.options
    }
    /// Whether more fragments of the same packet follow (`XDP_PKT_CONTD`).
    pub fn is_contd(&self) -> bool {
        self.options & XDP_PKT_CONTD != 0
    }
    /// Sets where the packet data lies in the chunk (checked against the chunk size on use).
    pub fn set(&mut self, offset: u32, len: u32) {
        self.offset = offset;
        self.len = len;
    }
    /// Sets the descriptor options for TX (e.g. `XDP_PKT_CONTD`).
    pub fn set_options(&mut self, options: u32) {
        self.options = options;
    }
    /// The same chunk with its packet at `offset..offset + len` and descriptor `options`, as a
    /// new value: what [`set`](Self::set) and [`set_options`](Self::set_options) do, without
    /// narrow stores into a `Frame` that is then moved whole. Such a move loads the stored
    /// fields back in wider pieces, which the CPU cannot forward from its store buffer: the
    /// load waits for every earlier store to drain (on a worker that just copied a sector
    /// range into a chunk, 3% of its time).
    #[inline]
    pub fn with_packet(self, offset: u32, len: u32, options: u32) -> Frame {
        Frame {
            offset,
            len,
            options,
            ..self
        }
    }
}

/// What a socket needs to turn descriptors into frames and back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    id: u32,
    chunk_size: u32,
    len: u64,
}

impl Layout {
    /// A Frame for a UMEM address the kernel handed back (RX or completion); `None` if the
    /// address is outside the UMEM.
    pub(crate) fn frame(&self, addr: u64, len: u32, options: u32) -> Option<Frame> {
        let base = addr & !(u64::from(self.chunk_size) - 1);
        let offset = (addr - base) as u32;
        (base < self.len).then_some(Frame {
            addr: base,
            offset,
            len,
            options,
            umem: self.id,
        })
    }

    /// Checks that `frame` belongs to this UMEM; returns its chunk base address.
    pub(crate) fn chunk_addr(&self, frame: &Frame) -> u64 {
        assert_eq!(frame.umem, self.id, "Frame belongs to another Umem");
        frame.addr
    }

    /// Checks that `frame` belongs to this UMEM and fits its chunk; returns the data address.
    pub(crate) fn desc_addr(&self, frame: &Frame) -> u64 {
        self.chunk_addr(frame);
        let end = u64::from(frame.offset) + u64::from(frame.len);
        assert!(
            end <= u64::from(self.chunk_size),
            "Frame data {}+{} overruns its {}-byte chunk",
            frame.offset,
            frame.len,
            self.chunk_size
        );
        frame.addr + u64::from(frame.offset)
    }

    pub(crate) fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
}

/// Clears the UMEM's registration when the socket that registered it goes away.
#[derive(Debug)]
pub(crate) struct Registration {
    owner: Arc<AtomicI32>,
    fd: RawFd,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self
            .owner
            .compare_exchange(self.fd, -1, Ordering::AcqRel, Ordering::Relaxed);
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Page-aligned anonymous memory of `frame_count` chunks, registered with the kernel by the
/// first [`Socket`](crate::Socket) created on it.
///
/// Dropping a `Umem` while a socket still uses it is memory-safe: the kernel keeps its own
/// pin on the pages until the socket is closed; the frames still in the rings are just lost.
#[derive(Debug)]
pub struct Umem {
    map: Mmap,
    cfg: UmemConfig,
    layout: Layout,
    free: Vec<u64>,
    /// fd of the socket this UMEM is registered on, or -1.
    owner: Arc<AtomicI32>,
}

impl Umem {
    /// Maps (and pre-faults) `frame_count * chunk_size` bytes; all frames start free.
    pub fn new(cfg: UmemConfig) -> Result<Umem> {
        cfg.validate()?;
        let len = u64::from(cfg.frame_count) * u64::from(cfg.chunk_size);
        let size = usize::try_from(len).map_err(|_| io::ErrorKind::OutOfMemory)?;
        let map = Mmap::anonymous(size)
            .map_err(|e| sys::context(e, format_args!("mapping a {size}-byte UMEM"), ""))?;
        let chunk = u64::from(cfg.chunk_size);
        let free = (0..u64::from(cfg.frame_count))
            .rev()
            .map(|i| i * chunk)
            .collect();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let layout = Layout {
            id,
            chunk_size: cfg.chunk_size,
            len,
        };
        Ok(Umem {
            map,
            cfg,
            layout,
            free,
            owner: Arc::new(AtomicI32::new(-1)),
        })
    }

    /// The configuration this UMEM was made with.
    pub fn config(&self) -> &UmemConfig {
        &self.cfg
    }

    /// Base and length of the whole area, e.g. to register it as io_uring fixed buffers.
    pub fn area(&self) -> (*mut u8, usize) {
        (self.map.ptr(), self.map.len())
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// Takes a free frame: the whole chunk (offset 0, len `chunk_size`).
    pub fn alloc(&mut self) -> Option<Frame> {
        let addr = self.free.pop()?;
        Some(Frame {
            addr,
            offset: 0,
            len: self.cfg.chunk_size,
            options: 0,
            umem: self.layout.id,
        })
    }

    /// Appends up to `max` free frames to `out`; returns how many.
    pub fn alloc_many(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = max.min(self.free.len());
        let (chunk, id) = (self.cfg.chunk_size, self.layout.id);
        let from = self.free.len() - n;
        out.extend(self.free.drain(from..).rev().map(|addr| Frame {
            addr,
            offset: 0,
            len: chunk,
            options: 0,
            umem: id,
        }));
        n
    }

    /// Returns a frame to the free list.
    ///
    /// # Panics
    /// If the frame belongs to another UMEM.
    pub fn free(&mut self, frame: Frame) {
        assert_eq!(frame.umem, self.layout.id, "Frame belongs to another Umem");
        self.free.push(frame.addr);
    }

    /// Number of frames on the free list.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Byte offset in the area of the frame's data (checked).
    fn start(&self, frame: &Frame) -> usize {
        // The area length fits in usize (checked in `new`), and so does every address in it.
        self.layout.desc_addr(frame) as usize
    }

    /// The packet bytes, `offset..offset + len` of the frame's chunk.
    ///
    /// # Panics
    /// If the frame belongs to another UMEM or its data overruns the chunk.
    pub fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        let start = self.start(frame);
        // SAFETY: `start` checked the frame is ours and in its chunk (a chunk of the mapping); the
        // frame is borrowed for 'a, so it is on no ring and no `&mut` to the chunk exists.
        unsafe { slice::from_raw_parts(self.map.ptr().add(start), frame.len as usize) }
    }

    /// The packet bytes, mutably. Panics as [`data`](Self::data).
    pub fn data_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        let start = self.start(frame);
        // SAFETY: as in `data`; the frame is borrowed exclusively, so this slice is the only
        // reference to its chunk.
        unsafe { slice::from_raw_parts_mut(self.map.ptr().add(start), frame.len as usize) }
    }

    /// The whole chunk, to build a packet at any offset (then call [`Frame::set`]).
    ///
    /// # Panics
    /// If the frame belongs to another UMEM.
    pub fn chunk_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        assert_eq!(frame.umem, self.layout.id, "Frame belongs to another Umem");
        let chunk = self.cfg.chunk_size as usize;
        // SAFETY: the frame is ours, so `addr` is a chunk base in the mapping; its exclusive borrow
        // makes this the only reference to the chunk, which the kernel does not own.
        unsafe { slice::from_raw_parts_mut(self.map.ptr().add(frame.addr as usize), chunk) }
    }

    /// Raw pointer to the frame's data (e.g. for io_uring while the frame is parked in an
    /// in-flight table). Panics as [`data`](Self::data). Using it is up to the caller's
    /// `unsafe`: valid while the frame is neither moved to a ring nor freed, and the Umem lives.
    pub fn data_ptr(&self, frame: &mut Frame) -> *mut u8 {
        let start = self.start(frame);
        self.map.ptr().wrapping_add(start)
    }

    /// Registers the area on `fd` (`XDP_UMEM_REG`); the first socket calls this.
    pub(crate) fn register(&self, fd: RawFd) -> Result<Registration> {
        if let Err(other) = self
            .owner
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "this UMEM is already registered on AF_XDP socket fd {other}; sharing a UMEM \
                     between sockets (XDP_SHARED_UMEM) is not implemented yet: use one Umem per socket"
                ),
            ));
        }
        let reg = Registration {
            owner: self.owner.clone(),
            fd,
        };
        let req = xdp_umem_reg {
            addr: self.map.ptr() as u64,
            len: self.layout.len,
            chunk_size: self.cfg.chunk_size,
            headroom: self.cfg.headroom,
            flags: 0,
            tx_metadata_len: 0,
        };
        sys::setsockopt(fd, SOL_XDP, XDP_UMEM_REG, &req).map_err(|e| {
            let what = format_args!("registering a {}-byte UMEM (XDP_UMEM_REG)", req.len);
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                let hint = "; ENOBUFS here means RLIMIT_MEMLOCK is too low to pin the UMEM: run \
                    as root or with CAP_IPC_LOCK, raise `ulimit -l`, or set \
                    LimitMEMLOCK=infinity in the systemd unit";
                sys::context(e, what, hint)
            } else {
                sys::context(e, what, "")
            }
        })?;
        Ok(reg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Umem {
        let cfg = UmemConfig {
            frame_count: 8,
            chunk_size: 2048,
            ..UmemConfig::default()
        };
        Umem::new(cfg).unwrap()
    }

    /// `AnonHugePages` of the smaps entry that starts at `addr`, in KiB.
    fn anon_huge_kib(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
                let start = range.split('-').next().unwrap();
                inside = usize::from_str_radix(start, 16).is_ok_and(|s| s == addr);
            } else if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    return v.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[test]
    fn a_large_umem_is_2mib_aligned_zeroed_and_asks_for_huge_pages() {
        let cfg = UmemConfig {
            frame_count: 1024,
            chunk_size: 4096,
            ..UmemConfig::default()
        };
        let mut u = Umem::new(cfg).unwrap();
        let (base, len) = u.area();
        assert_eq!((base as usize % (2 << 20), len), (0, 4 << 20));
        let mut f = u.alloc().unwrap();
        assert!(u.chunk_mut(&mut f).iter().all(|&b| b == 0));
        u.chunk_mut(&mut f).fill(0xa5);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.contains("[never]") || thp.is_empty() {
            eprintln!("transparent huge pages are off here ({thp:?}): not checking for them");
            return;
        }
        let huge = anon_huge_kib(base as usize).expect("the UMEM has an smaps entry");
        assert!(
            huge >= 2048,
            "UMEM got {huge} KiB of huge pages (THP: {thp:?})"
        );
    }

    #[test]
    fn alloc_free_and_data() {
        let mut u = small();
        assert_eq!(u.area().1, 8 * 2048);
        assert_eq!(u.area().0 as usize % 4096, 0);
        let mut a = u.alloc().unwrap();
        let mut b = u.alloc().unwrap();
        assert_eq!((a.addr(), b.addr(), a.len()), (0, 2048, 2048));
        u.chunk_mut(&mut a)[100..103].copy_from_slice(b"abc");
        a.set(100, 3);
        u.data_mut(&mut b).fill(7);
        assert_eq!(u.data(&a), b"abc");
        assert!(u.data(&b).iter().all(|&x| x == 7));
        let mut v = Vec::new();
        assert_eq!(u.alloc_many(&mut v, 100), 6);
        assert!(u.alloc().is_none());
        assert_eq!(v[0].addr(), 4096);
        u.free(a);
        u.free(b);
        v.drain(..).for_each(|f| u.free(f));
        assert_eq!(u.free_count(), 8);
    }

    #[test]
    fn with_packet_places_the_packet_and_keeps_the_chunk() {
        let mut u = small();
        let mut a = u.alloc().unwrap();
        u.chunk_mut(&mut a)[300..304].copy_from_slice(b"aoe!");
        let addr = a.addr();
        let a = a.with_packet(300, 4, XDP_PKT_CONTD);
        assert_eq!((a.addr(), a.offset(), a.len()), (addr, 300, 4));
        assert!(a.is_contd());
        assert_eq!(u.data(&a), b"aoe!");
        let a = a.with_packet(301, 2, 0);
        assert!(!a.is_contd());
        assert_eq!(u.data(&a), b"oe");
        u.free(a);
        assert_eq!(u.free_count(), 8);
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn with_packet_is_checked_on_use() {
        let mut u = small();
        let f = u.alloc().unwrap().with_packet(2047, 2, 0);
        let _ = u.data(&f);
    }

    #[test]
    #[should_panic(expected = "another Umem")]
    fn foreign_frame_panics() {
        let (mut a, b) = (small(), small());
        let f = a.alloc().unwrap();
        let _ = b.data(&f);
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn overrun_panics() {
        let mut u = small();
        let mut f = u.alloc().unwrap();
        f.set(2000, 49);
        let _ = u.data(&f);
    }

    #[test]
    fn config_is_validated() {
        for cfg in [
            UmemConfig {
                chunk_size: 8192,
                ..UmemConfig::default()
            },
            UmemConfig {
                headroom: 4000,
                ..UmemConfig::default()
            },
            UmemConfig {
                fill_size: 1000,
                ..UmemConfig::default()
            },
        ] {
            let err = Umem::new(cfg).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        }
        assert_eq!(UmemConfig::default().rx_offset() + 36, 512);
    }
}
