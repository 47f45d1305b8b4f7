//! Packet I/O: one AF_XDP socket on one interface queue, with the XDP steering program.
//!
//! One UMEM of 4096 chunks of 4 KiB serves both directions. Free chunks sit in a pool; the
//! fill ring is kept topped up to a target from it, the rest is for transmission. Frames are
//! moved in batches: building frames queues them, [`Port::flush`] puts the batch on the TX ring
//! and kicks the kernel once per batch (copy mode sends at most 32 frames per kick, so it kicks
//! again while the kernel has not taken everything), completions go back to the pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aoe::Mac;
use xblade_ebpf::{Role, Steering, XdpMode};
use xsk::{Frame, Socket, SocketConfig, Umem, UmemConfig};

use crate::cli::PortArgs;

/// Chunks in the UMEM.
const FRAMES: u32 = 4096;
/// Chunk size. Frames are single-buffer, so a frame is at most this minus the RX offset.
pub const CHUNK: u32 = 4096;
/// Ring sizes (fill, completion, RX, TX).
const RING: u32 = 2048;
/// Binding retries (20 ms apart) while the queue is busy.
const BUSY_RETRIES: u32 = 100;
/// Most kicks per flush before leaving the rest for the next loop iteration.
const MAX_KICKS: usize = 64;

/// Packet counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PortStats {
    /// Frames put on the TX ring.
    pub tx_frames: u64,
    /// Frames taken from the RX ring.
    pub rx_frames: u64,
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
    fill_target: u32,
    pool: Vec<Frame>,
    txq: Vec<Frame>,
    done: Vec<Frame>,
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

impl Port {
    /// Opens the socket on `args.interface` queue `args.queue`, attaches the steering program
    /// for `role` and registers the socket. `fill_target` chunks are kept on the fill ring.
    pub fn open(args: &PortArgs, role: Role, fill_target: u32) -> Result<Port> {
        let ifname = args.interface.as_str();
        let (mac, mtu) = iface_info(ifname)?;
        if mac == [0; 6] {
            bail!("interface {ifname} has no MAC address (loopback?): AoE needs Ethernet");
        }
        let ucfg = UmemConfig {
            frame_count: FRAMES,
            chunk_size: CHUNK,
            headroom: 0,
            fill_size: RING,
            comp_size: RING,
        };
        let mut umem = Umem::new(ucfg).context("creating the UMEM")?;
        let scfg = SocketConfig {
            rx_size: RING,
            tx_size: RING,
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
                r => break r?,
            }
        };
        let mut steering = Steering::attach(ifname, args.xdp_mode, role, args.replace_xdp)
            .with_context(|| format!("attaching the XDP steering program to {ifname}"))?;
        steering
            .register(args.queue, sock.fd())
            .context("registering the AF_XDP socket with the steering program")?;
        let mut pool = Vec::with_capacity(FRAMES as usize);
        umem.alloc_many(&mut pool, FRAMES as usize);
        let mut port = Port {
            steering,
            sock,
            umem,
            ifname: ifname.to_owned(),
            mac,
            mtu,
            fill_target: fill_target.min(RING),
            pool,
            txq: Vec::with_capacity(RING as usize),
            done: Vec::with_capacity(RING as usize),
            in_tx: 0,
            stats: PortStats::default(),
        };
        port.refill();
        Ok(port)
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

    /// Where received packets start in their chunk.
    pub fn rx_offset(&self) -> usize {
        self.umem.config().rx_offset() as usize
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

    /// Whether [`alloc`](Self::alloc) will return a frame (reaps completions if needed).
    pub fn has_frame(&mut self) -> bool {
        if self.pool.is_empty() {
            self.reap();
        }
        !self.pool.is_empty()
    }

    /// The whole chunk of `frame`.
    pub fn chunk<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.umem.chunk_mut(frame)
    }

    /// The packet bytes of a received frame.
    pub fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.umem.data(frame)
    }

    /// Queues `frame` (its `offset..offset + len`) for transmission at the next flush.
    pub fn push(&mut self, frame: Frame) {
        self.txq.push(frame);
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
    pub fn recycle(&mut self, frame: Frame) {
        self.pool.push(frame);
    }

    /// Frames queued and not yet on the TX ring.
    pub fn queued(&self) -> usize {
        self.txq.len()
    }

    /// Puts queued frames on the TX ring, kicks the kernel until it has taken them (bounded),
    /// and reaps completions.
    pub fn flush(&mut self) -> Result<()> {
        if !self.txq.is_empty() {
            let n = self.sock.send(&mut self.txq);
            self.in_tx += n;
            self.stats.tx_frames += n as u64;
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

    /// Takes up to `max` received frames. Call [`recycle`](Self::recycle) on each when done,
    /// and [`refill`](Self::refill) now and then.
    pub fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = self.sock.recv(out, max);
        self.stats.rx_frames += n as u64;
        n
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

    /// Receives until `deadline` (or `stop`), calling `f` on each packet's bytes; `f` returns
    /// true to stop early.
    pub fn recv_until(
        &mut self,
        deadline: Instant,
        stop: &AtomicBool,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let mut rx = Vec::with_capacity(64);
        loop {
            self.flush()?;
            self.refill();
            if self.recv(&mut rx, 64) > 0 {
                let mut done = false;
                for frame in rx.drain(..) {
                    done = done || f(self.umem.data(&frame));
                    self.pool.push(frame);
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
