//! Packet I/O: one AF_XDP socket on one interface queue, with the XDP steering program.
//!
//! One UMEM of 4 KiB chunks serves both directions. Free chunks sit in a pool; the fill ring is
//! kept topped up to a target from it, the rest is for transmission. Frames are moved in
//! batches: building frames queues them, [`Port::flush`] puts the batch on the TX ring and
//! kicks the kernel once per batch (copy mode sends at most 32 descriptors per kick, so it
//! kicks again while the kernel has not taken everything), completions go back to the pool.
//!
//! Jumbo frames: when the MTU makes a frame larger than what fits a chunk behind the RX offset
//! (3840 bytes), the socket binds with `XDP_USE_SG` (the steering program is `xdp.frags`).
//! A received frame may then be several descriptors (`XDP_PKT_CONTD` on all but the last,
//! possibly split across RX batches): [`Port::next_packet`] hands out whole frames, and
//! [`Packet`] reads across their fragments. A frame to send that does not fit one chunk is
//! laid out by [`Port::push_packet`]: the header and as many whole sectors as fit in the first
//! chunk, 8 sectors in each following one, all but the last descriptor with `XDP_PKT_CONTD`.
//! Only whole frames go on the TX ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aoe::wire::{ETH_HLEN, SECTOR};
use aoe::Mac;
use xblade_ebpf::{Role, Steering, XdpMode};
use xsk::if_xdp::XDP_PKT_CONTD;
use xsk::{Frame, Socket, SocketConfig, Umem, UmemConfig};

use crate::cli::PortArgs;

/// Chunks in the UMEM (single-buffer; twice as many with multi-buffer).
const FRAMES: u32 = 4096;
/// Chunk size. A single-buffer frame is at most this minus the RX offset.
pub const CHUNK: u32 = 4096;
/// Most descriptors one received frame may span before it is dropped as malformed (a 64 KiB
/// frame in 3840-byte fragments is 18; the kernel sends at most 17 per frame).
const MAX_FRAGS: usize = 32;
/// Ring sizes (fill, completion, RX, TX).
const RING: u32 = 2048;
/// Binding retries (20 ms apart) while the queue is busy.
const BUSY_RETRIES: u32 = 100;
/// Most kicks per flush before leaving the rest for the next loop iteration.
const MAX_KICKS: usize = 64;

/// Packet counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PortStats {
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Whole frames received.
    pub rx_frames: u64,
    /// TX descriptors put on the TX ring (a jumbo frame is several).
    pub tx_descs: u64,
    /// RX descriptors taken from the RX ring (a jumbo frame may be several).
    pub rx_descs: u64,
    /// Received frames dropped as malformed (more than 32 fragments).
    pub rx_bad: u64,
    /// `sendto` kicks.
    pub kicks: u64,
    /// `poll` waits.
    pub polls: u64,
}

/// An AF_XDP socket bound to one queue, the steering program, and the UMEM.
pub struct Port {
    // Drop order: detach the program (and its XSKMAP reference) first, then close the socket,
    // then unmap the UMEM.
    steering: Steering,
    sock: Socket,
    umem: Umem,
    ifname: String,
    mac: Mac,
    mtu: u16,
    multi_buffer: bool,
    rx_queues: u32,
    fill_target: u32,
    pool: Vec<Frame>,
    txq: Vec<Frame>,
    /// The whole frames at the front of `txq` when the TX ring cannot take all of it.
    txbatch: Vec<Frame>,
    done: Vec<Frame>,
    /// Descriptors received and not yet handed out, in reverse order (popped from the end).
    rxq: Vec<Frame>,
    /// Fragments of a frame whose last descriptor has not arrived yet.
    partial: Vec<Frame>,
    /// Frames handed to the TX ring and not completed yet.
    in_tx: usize,
    /// Counters.
    pub stats: PortStats,
}

/// An interface's MAC and MTU, from sysfs (of the current network namespace).
pub fn iface_info(name: &str) -> Result<(Mac, u16)> {
    let dir = format!("/sys/class/net/{name}");
    let addr = std::fs::read_to_string(format!("{dir}/address")).with_context(|| {
        format!("network interface `{name}` not found (see `ip link`; wrong network namespace?)")
    })?;
    let mac = aoe::wire::parse_mac(addr.trim())
        .with_context(|| format!("interface {name} has no Ethernet address ({addr:?})"))?;
    let mtu: u32 = std::fs::read_to_string(format!("{dir}/mtu"))
        .with_context(|| format!("reading the MTU of {name}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing the MTU of {name}"))?;
    Ok((mac, mtu.min(u32::from(u16::MAX)) as u16))
}

/// Number of RX queues of an interface, from sysfs (`queues/rx-N`); 1 if unreadable.
pub fn rx_queue_count(name: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// The largest frame (Ethernet header included) that fits one chunk behind `rx_offset`.
pub fn single_chunk_frame(rx_offset: u32) -> usize {
    (CHUNK - rx_offset) as usize
}

/// How a frame of `len` bytes starting at `off` in its first chunk, whose first `hdr` bytes
/// are headers and the rest whole sectors, is laid out: the length of its first descriptor
/// (the whole frame if it fits, else the header and as many sectors as fit) and the number of
/// descriptors (each following chunk takes `CHUNK` bytes, 8 sectors, from offset 0).
pub fn layout(off: usize, len: usize, hdr: usize) -> (usize, usize) {
    let room = CHUNK as usize - off;
    if len <= room {
        return (len, 1);
    }
    let first = hdr + (room - hdr) / SECTOR * SECTOR;
    (first, 1 + (len - first).div_ceil(CHUNK as usize))
}

impl Port {
    /// Opens the socket on `args.interface` queue `args.queue`, attaches the steering program
    /// for `role` and registers the socket. `fill_target` chunks are kept on the fill ring.
    /// Binds multi-buffer (`XDP_USE_SG`) when the MTU allows frames larger than a chunk.
    pub fn open(args: &PortArgs, role: Role, fill_target: u32) -> Result<Port> {
        let ifname = args.interface.as_str();
        let (mac, mtu) = iface_info(ifname)?;
        if mac == [0; 6] {
            bail!("interface {ifname} has no MAC address (loopback?): AoE needs Ethernet");
        }
        let mut ucfg = UmemConfig {
            frame_count: FRAMES,
            chunk_size: CHUNK,
            headroom: 0,
            fill_size: RING,
            comp_size: RING,
        };
        let multi_buffer = usize::from(mtu) + ETH_HLEN > single_chunk_frame(ucfg.rx_offset());
        if multi_buffer {
            // A jumbo frame is up to 3 chunks each way.
            ucfg.frame_count = 2 * FRAMES;
        }
        let frames = ucfg.frame_count as usize;
        let mut umem = Umem::new(ucfg).context("creating the UMEM")?;
        let scfg = SocketConfig {
            rx_size: RING,
            tx_size: RING,
            multi_buffer,
            ..SocketConfig::default()
        };
        // A socket closed a moment ago (a previous aoe-bench on this queue) frees the queue
        // asynchronously: retry EBUSY for a while.
        let mut tries = 0;
        let sock = loop {
            match Socket::new(ifname, args.queue, &umem, scfg) {
                Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy && tries < BUSY_RETRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if multi_buffer => {
                    return Err(e).with_context(|| {
                        format!(
                            "MTU {mtu} of {ifname} makes frames larger than a {CHUNK}-byte \
                             UMEM chunk, which needs multi-buffer AF_XDP (XDP_USE_SG, Linux \
                             6.6+); lower the MTU to 3800 or less to do without"
                        )
                    })
                }
                r => break r?,
            }
        };
        let rx_queues = rx_queue_count(ifname);
        let mut steering = Steering::attach(ifname, args.xdp_mode, role, args.replace_xdp)
            .with_context(|| format!("attaching the XDP steering program to {ifname}"))?;
        steering
            .register(args.queue, sock.fd())
            .context("registering the AF_XDP socket with the steering program")?;
        let mut pool = Vec::with_capacity(frames);
        umem.alloc_many(&mut pool, frames);
        let mut port = Port {
            steering,
            sock,
            umem,
            ifname: ifname.to_owned(),
            mac,
            mtu,
            multi_buffer,
            rx_queues,
            fill_target: fill_target.min(RING),
            pool,
            txq: Vec::with_capacity(2 * RING as usize),
            txbatch: Vec::with_capacity(RING as usize),
            done: Vec::with_capacity(RING as usize),
            rxq: Vec::with_capacity(RING as usize),
            partial: Vec::with_capacity(MAX_FRAGS + 1),
            in_tx: 0,
            stats: PortStats::default(),
        };
        port.refill();
        if let Some(note) = port.queue_note(false) {
            eprintln!("aoe-bench: note: {note}");
        }
        Ok(port)
    }

    /// The single-queue limitation, when the interface has several RX queues (None when it
    /// has one): a one-line note, or (`explain`) the whole story with the ways out, for when
    /// nothing arrives.
    pub fn queue_note(&self, explain: bool) -> Option<String> {
        let (i, n, q) = (&self.ifname, self.rx_queues, self.sock.queue_id());
        if n <= 1 {
            return None;
        }
        if !explain {
            return Some(format!(
                "{i} has {n} RX queues; aoe-bench reads AoE frames from queue {q} only \
                 (one AF_XDP socket per process)"
            ));
        }
        Some(format!(
            "{i} has {n} RX queues and aoe-bench reads AoE frames from queue {q} only (one \
             AF_XDP socket per process): frames the NIC puts on another queue go to the \
             kernel stack and are never seen. AoE is not IP, so RSS puts all of it on one \
             queue, not necessarily {q}: steer it there (`ethtool -N {i} flow-type ether \
             proto 0x88a2 action {q}`), pass --queue with the queue it lands on, or use one \
             queue (`ethtool -L {i} combined 1`)"
        ))
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Our MAC.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// The interface MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Whether the socket is bound multi-buffer (frames larger than a chunk).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The largest frame (Ethernet header included) this port sends and receives: the MTU's,
    /// or what fits a chunk when the socket is single-buffer.
    pub fn max_frame(&self) -> usize {
        let mtu = usize::from(self.mtu) + ETH_HLEN;
        if self.multi_buffer {
            mtu
        } else {
            mtu.min(single_chunk_frame(self.umem.config().rx_offset()))
        }
    }

    /// XDP mode in use (driver or skb).
    pub fn xdp_mode(&self) -> XdpMode {
        self.steering.mode()
    }

    /// Whether the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.sock.zero_copy()
    }

    /// The steering program's counters, if readable.
    pub fn steering_counters(&self) -> Option<xblade_ebpf::Counters> {
        self.steering.counters().ok()
    }

    /// The kernel's AF_XDP counters, if readable.
    pub fn xsk_statistics(&self) -> Option<xsk::XdpStatistics> {
        self.sock.statistics().ok()
    }

    /// Tops the fill ring up to its target from the pool.
    pub fn refill(&mut self) {
        let occupied = RING - self.sock.fill_free();
        let want = self.fill_target.saturating_sub(occupied) as usize;
        if want == 0 || self.pool.is_empty() {
            return;
        }
        let from = self.pool.len().saturating_sub(want);
        let mut batch = self.pool.split_off(from);
        self.sock.fill(&mut batch);
        self.pool.append(&mut batch);
    }

    /// Moves transmitted frames back to the pool.
    pub fn reap(&mut self) {
        if self.in_tx > 0 {
            let n = self.sock.complete(&mut self.done, RING as usize);
            self.in_tx -= n;
            self.pool.append(&mut self.done);
        }
    }

    /// A free frame (the whole chunk) to build a packet in.
    pub fn alloc(&mut self) -> Option<Frame> {
        if self.pool.is_empty() {
            self.reap();
        }
        self.pool.pop()
    }

    /// Whether `n` frames are free (reaps completions if needed).
    pub fn has_frames(&mut self, n: usize) -> bool {
        if self.pool.len() < n {
            self.reap();
        }
        self.pool.len() >= n
    }

    /// The whole chunk of `frame`.
    pub fn chunk<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.umem.chunk_mut(frame)
    }

    /// The packet bytes of a received frame.
    pub fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.umem.data(frame)
    }

    /// Queues a whole single-descriptor `frame` (its `offset..offset + len`) for transmission
    /// at the next flush.
    pub fn push(&mut self, mut frame: Frame) {
        frame.set_options(0);
        self.txq.push(frame);
        self.stats.tx_frames += 1;
    }

    /// Queues a frame of `len` bytes whose first `hdr` bytes the caller built at `off` in
    /// `head`'s chunk; the rest is whole sectors, laid out as [`layout`] says. `fill(pos, buf)`
    /// is called on each piece of the rest, `pos` being its offset in the frame, so the data
    /// can be written in place (or not at all). Needs `layout(..).1 - 1` free frames besides
    /// `head` (see [`has_frames`](Self::has_frames)); without them, or when the frame needs
    /// several descriptors on a single-buffer socket, `head` goes back to the pool and nothing
    /// is queued: returns false.
    pub fn push_packet(
        &mut self,
        mut head: Frame,
        off: usize,
        len: usize,
        hdr: usize,
        mut fill: impl FnMut(usize, &mut [u8]),
    ) -> bool {
        let (first, descs) = layout(off, len, hdr);
        if (descs > 1 && !self.multi_buffer) || !self.has_frames(descs - 1) {
            self.recycle(head);
            return false;
        }
        if first > hdr {
            fill(
                hdr,
                &mut self.umem.chunk_mut(&mut head)[off + hdr..off + first],
            );
        }
        head.set(off as u32, first as u32);
        head.set_options(if descs > 1 { XDP_PKT_CONTD } else { 0 });
        self.txq.push(head);
        let mut pos = first;
        while pos < len {
            let mut f = self.pool.pop().expect("has_frames checked");
            let n = (len - pos).min(CHUNK as usize);
            fill(pos, &mut self.umem.chunk_mut(&mut f)[..n]);
            f.set(0, n as u32);
            pos += n;
            f.set_options(if pos < len { XDP_PKT_CONTD } else { 0 });
            self.txq.push(f);
        }
        self.stats.tx_frames += 1;
        true
    }

    /// Builds a packet at chunk offset 0 with `build` (which returns its length) and queues it.
    pub fn push_with(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> Result<()> {
        let mut f = self
            .alloc()
            .context("no free UMEM frame to transmit (TX not completing?)")?;
        let n = build(self.chunk(&mut f));
        f.set(0, n as u32);
        self.push(f);
        Ok(())
    }

    /// Returns a received (or unused) frame to the pool.
    pub fn recycle(&mut self, mut frame: Frame) {
        frame.set_options(0);
        self.pool.push(frame);
    }

    /// Returns every frame of a received packet to the pool, leaving `frags` empty.
    pub fn recycle_all(&mut self, frags: &mut Vec<Frame>) {
        for f in frags.drain(..) {
            self.recycle(f);
        }
    }

    /// Descriptors queued and not yet on the TX ring.
    pub fn queued(&self) -> usize {
        self.txq.len()
    }

    /// Puts queued frames on the TX ring (whole frames only: a jumbo frame's descriptors go
    /// together), kicks the kernel until it has taken them (bounded), and reaps completions.
    pub fn flush(&mut self) -> Result<()> {
        if !self.txq.is_empty() {
            let free = self.sock.tx_free() as usize;
            let n = if free >= self.txq.len() {
                self.sock.send(&mut self.txq)
            } else {
                // Up to the last frame boundary that fits; the rest waits for the next flush.
                let mut k = free;
                while k > 0 && self.txq[k - 1].is_contd() {
                    k -= 1;
                }
                self.txbatch.extend(self.txq.drain(..k));
                let n = self.sock.send(&mut self.txbatch);
                debug_assert!(self.txbatch.is_empty(), "the TX ring had room for {k}");
                n
            };
            self.in_tx += n;
            self.stats.tx_descs += n as u64;
        }
        for _ in 0..MAX_KICKS {
            let unsent = RING - self.sock.tx_free();
            if unsent == 0 || !self.sock.needs_wakeup_tx() {
                break;
            }
            self.sock.kick_tx()?;
            self.stats.kicks += 1;
        }
        self.reap();
        Ok(())
    }

    /// Takes up to `max` descriptors from the RX ring, for [`next_packet`](Self::next_packet);
    /// returns how many. Call [`refill`](Self::refill) now and then.
    pub fn recv(&mut self, max: usize) -> usize {
        // `rxq` is kept in reverse order, so `next_packet` pops from its end; new descriptors
        // go behind any not handed out yet.
        self.rxq.reverse();
        let n = self.sock.recv(&mut self.rxq, max);
        self.rxq.reverse();
        self.stats.rx_descs += n as u64;
        n
    }

    /// Moves the next whole received frame's descriptors into `out` (which must be empty):
    /// one, or several for a multi-buffer frame. False when no whole frame is left; fragments
    /// of a frame still arriving are kept for the next [`recv`](Self::recv). Give the frames
    /// back with [`recycle_all`](Self::recycle_all) (or reuse them to answer).
    pub fn next_packet(&mut self, out: &mut Vec<Frame>) -> bool {
        debug_assert!(out.is_empty());
        while let Some(f) = self.rxq.pop() {
            let contd = f.is_contd();
            self.partial.push(f);
            if !contd {
                std::mem::swap(out, &mut self.partial);
                self.stats.rx_frames += 1;
                return true;
            }
            if self.partial.len() > MAX_FRAGS {
                self.stats.rx_bad += 1;
                let mut bad = std::mem::take(&mut self.partial);
                self.recycle_all(&mut bad);
                self.partial = bad;
            }
        }
        false
    }

    /// An empty vector for [`next_packet`](Self::next_packet), large enough for any frame.
    pub fn packet_vec() -> Vec<Frame> {
        Vec::with_capacity(MAX_FRAGS + 1)
    }

    /// A view of a received frame's bytes.
    pub fn packet<'a>(&'a self, frags: &'a [Frame]) -> Packet<'a> {
        Packet {
            umem: &self.umem,
            frags,
        }
    }

    /// Sleeps until a frame arrives or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> Result<()> {
        if self.sock.needs_wakeup_fill() {
            self.sock.wake_rx()?;
        }
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
        self.stats.polls += 1;
        self.sock.poll_rx(ms)?;
        Ok(())
    }

    /// Receives until `deadline` (or `stop`), calling `f` on each frame's first descriptor
    /// (control frames fit there); `f` returns true to stop early.
    pub fn recv_until(
        &mut self,
        deadline: Instant,
        stop: &AtomicBool,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let mut pkt = Port::packet_vec();
        loop {
            self.flush()?;
            self.refill();
            if self.recv(64) > 0 {
                let mut done = false;
                while self.next_packet(&mut pkt) {
                    done = done || f(self.umem.data(&pkt[0]));
                    self.recycle_all(&mut pkt);
                }
                if done {
                    return Ok(());
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline || stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.wait((deadline - now).min(Duration::from_millis(20)))?;
        }
    }
}

/// A received frame, possibly in several fragments (each a descriptor's bytes).
#[derive(Clone, Copy)]
pub struct Packet<'a> {
    umem: &'a Umem,
    frags: &'a [Frame],
}

impl<'a> Packet<'a> {
    /// The first fragment (the whole frame unless it is multi-buffer).
    pub fn head(&self) -> &'a [u8] {
        self.umem.data(&self.frags[0])
    }

    /// The frame's length, over all fragments.
    pub fn len(&self) -> usize {
        self.frags.iter().map(|f| f.len() as usize).sum()
    }

    /// The first `out.len()` bytes of the frame (fewer if it is shorter), gathered into
    /// `out`: for headers when the first fragment is too short to hold them.
    pub fn prefix<'b>(&self, out: &'b mut [u8]) -> &'b [u8] {
        let mut n = 0;
        for f in self.frags {
            let d = self.umem.data(f);
            let k = d.len().min(out.len() - n);
            out[n..n + k].copy_from_slice(&d[..k]);
            n += k;
            if n == out.len() {
                break;
            }
        }
        &out[..n]
    }

    /// Calls `f` on each whole `SECTOR`-byte block of the frame from byte `start` on, at most
    /// `max` of them, in order; returns how many. Blocks lie in the fragments where they can
    /// (no copy); only a block straddling two fragments is gathered into a stack buffer.
    pub fn for_each_sector(&self, start: usize, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let mut carry = [0u8; SECTOR];
        let (mut have, mut skip, mut done) = (0, start, 0);
        for frag in self.frags {
            let mut d = self.umem.data(frag);
            if skip >= d.len() {
                skip -= d.len();
                continue;
            }
            d = &d[skip..];
            skip = 0;
            if have > 0 {
                let k = (SECTOR - have).min(d.len());
                carry[have..have + k].copy_from_slice(&d[..k]);
                have += k;
                d = &d[k..];
                if have < SECTOR {
                    continue;
                }
                if done == max {
                    return done;
                }
                f(&carry);
                done += 1;
            }
            let mut blocks = d.chunks_exact(SECTOR);
            for b in &mut blocks {
                if done == max {
                    return done;
                }
                f(b);
                done += 1;
            }
            let rest = blocks.remainder();
            carry[..rest.len()].copy_from_slice(rest);
            have = rest.len();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoe::wire::ATA_HLEN;

    #[test]
    fn layout_keeps_sectors_whole() {
        // Fits one chunk (behind the RX offset, or at offset 0).
        assert_eq!(layout(256, 60, ATA_HLEN), (60, 1));
        assert_eq!(layout(256, ATA_HLEN + 7 * 512, ATA_HLEN), (3620, 1));
        assert_eq!(layout(0, 4096, ATA_HLEN), (4096, 1));
        // 16 sectors behind the RX offset: header + 7, then 8, then 1.
        assert_eq!(layout(256, ATA_HLEN + 16 * 512, ATA_HLEN), (3620, 3));
        // At offset 0: header + 7 (3620, as 8 would overrun), then 8, then 1.
        assert_eq!(layout(0, ATA_HLEN + 16 * 512, ATA_HLEN), (3620, 3));
        assert_eq!(layout(0, ATA_HLEN + 15 * 512, ATA_HLEN), (3620, 2));
        // 17 sectors (MTU 9000 allows it): 7 + 8 + 2.
        assert_eq!(layout(256, ATA_HLEN + 17 * 512, ATA_HLEN), (3620, 3));
    }

    fn umem() -> Umem {
        Umem::new(UmemConfig {
            frame_count: 8,
            chunk_size: CHUNK,
            ..UmemConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn packet_reads_sectors_across_fragments() {
        let mut u = umem();
        // A 36-byte header and 6 sectors of bytes i % 251, split 1000 / 2000 / rest.
        let bytes: Vec<u8> = (0..ATA_HLEN + 6 * SECTOR)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut frags = Vec::new();
        let mut at = 0;
        for n in [1000, 2000, bytes.len() - 3000] {
            let mut f = u.alloc().unwrap();
            u.chunk_mut(&mut f)[100..100 + n].copy_from_slice(&bytes[at..at + n]);
            f.set(100, n as u32);
            f.set_options(if at + n < bytes.len() {
                XDP_PKT_CONTD
            } else {
                0
            });
            frags.push(f);
            at += n;
        }
        let p = Packet {
            umem: &u,
            frags: &frags,
        };
        assert_eq!(p.len(), bytes.len());
        assert_eq!(p.head(), &bytes[..1000]);
        let mut got = Vec::new();
        assert_eq!(
            p.for_each_sector(ATA_HLEN, 99, |s| got.extend_from_slice(s)),
            6
        );
        assert_eq!(got, &bytes[ATA_HLEN..]);
        let mut n = 0;
        assert_eq!(p.for_each_sector(ATA_HLEN, 4, |_| n += 1), 4);
        assert_eq!(n, 4);
        // A trailing partial block is not a sector.
        assert_eq!(p.for_each_sector(ATA_HLEN + 100, 99, |_| ()), 5);
        let mut hdr = [0u8; 64];
        assert_eq!(p.prefix(&mut hdr), &bytes[..64]);
        let mut big = vec![0u8; 5000];
        assert_eq!(p.prefix(&mut big), &bytes[..]);
    }
}
