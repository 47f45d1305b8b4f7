//! The simulated packet side: a UMEM and four bounded rings, and the "NIC" that fills RX
//! descriptors from the fill ring and takes whole packets off the TX ring.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use xblade::worker::Packets;
use xsk::if_xdp::XDP_PKT_CONTD;
use xsk::{Frame, Umem};

/// The four rings of an AF_XDP socket over one UMEM, each with a fixed capacity.
pub struct SimNet {
    pub umem: Umem,
    pub chunk: usize,
    pub fill: VecDeque<Frame>,
    pub fill_cap: usize,
    pub rx: VecDeque<Frame>,
    pub rx_cap: usize,
    pub tx: VecDeque<Frame>,
    pub tx_cap: usize,
    pub comp: VecDeque<Frame>,
    pub comp_cap: usize,
    pub zero_copy: bool,
    /// The `max` of the last `recv` call: how many descriptors the worker had room for.
    pub recv_max: Option<usize>,
    pub kicks: Cell<u64>,
}

impl SimNet {
    /// The NIC receives `pkt`: one descriptor per `chunk - rx_offset` bytes (several only on a
    /// multi-buffer socket), each in a fill-ring chunk behind the RX offset, the rest of the
    /// chunk scribbled with `poison`. `None`: dropped (no fill buffer, RX ring full, or too
    /// large for a single-buffer socket), as a real NIC drops.
    pub fn deliver(
        &mut self,
        pkt: &[u8],
        rx_offset: usize,
        multi: bool,
        poison: u8,
    ) -> Option<usize> {
        assert!(!pkt.is_empty());
        let room = self.chunk - rx_offset;
        let ndesc = pkt.len().div_ceil(room);
        if (ndesc > 1 && !multi) || self.fill.len() < ndesc || self.rx_cap - self.rx.len() < ndesc {
            return None;
        }
        for (i, piece) in pkt.chunks(room).enumerate() {
            let mut f = self.fill.pop_front().expect("checked");
            {
                let c = self.umem.chunk_mut(&mut f);
                c.fill(poison);
                c[rx_offset..rx_offset + piece.len()].copy_from_slice(piece);
            }
            f.set(rx_offset as u32, piece.len() as u32);
            f.set_options(if i + 1 < ndesc { XDP_PKT_CONTD } else { 0 });
            self.rx.push_back(f);
        }
        Some(ndesc)
    }

    /// The NIC transmits whole packets from the TX ring, at most `max` descriptors, while the
    /// completion ring has room: appends each packet's bytes (its descriptors concatenated) to
    /// `out` and moves its frames to the completion ring. Returns the descriptors taken.
    pub fn transmit(&mut self, max: usize, out: &mut Vec<Vec<u8>>) -> usize {
        let mut taken = 0;
        while let Some(end) = self.tx.iter().position(|f| !f.is_contd()) {
            let n = end + 1;
            if taken + n > max || self.comp_cap - self.comp.len() < n {
                break;
            }
            let mut bytes = Vec::new();
            for f in self.tx.drain(..n) {
                bytes.extend_from_slice(self.umem.data(&f));
                self.comp.push_back(f);
            }
            out.push(bytes);
            taken += n;
        }
        taken
    }
}

impl Packets for SimNet {
    fn umem(&self) -> &Umem {
        &self.umem
    }

    fn umem_mut(&mut self) -> &mut Umem {
        &mut self.umem
    }

    fn fill_free(&self) -> u32 {
        (self.fill_cap - self.fill.len()) as u32
    }

    fn fill(&mut self, frames: &mut Vec<Frame>) -> usize {
        let n = (self.fill_cap - self.fill.len()).min(frames.len());
        self.fill.extend(frames.drain(..n));
        n
    }

    fn recv(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        self.recv_max = Some(max);
        let n = max.min(self.rx.len());
        out.extend(self.rx.drain(..n));
        n
    }

    fn send(&mut self, frames: &mut Vec<Frame>) -> usize {
        let n = (self.tx_cap - self.tx.len()).min(frames.len());
        for f in &frames[..n] {
            // What `xsk::Socket::send` asserts.
            assert!(
                f.offset() as usize + f.len() as usize <= self.chunk,
                "TX descriptor {}+{} overruns its {}-byte chunk",
                f.offset(),
                f.len(),
                self.chunk
            );
        }
        self.tx.extend(frames.drain(..n));
        n
    }

    fn complete(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        let n = max.min(self.comp.len());
        for mut f in self.comp.drain(..n) {
            // As `xsk::Socket::complete` hands frames back: the whole chunk, no options.
            f.set(0, self.chunk as u32);
            f.set_options(0);
            out.push(f);
        }
        n
    }

    fn tx_unsent(&self) -> u32 {
        self.tx.len() as u32
    }

    fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    fn needs_wakeup_tx(&self) -> bool {
        true
    }

    fn needs_wakeup_fill(&self) -> bool {
        true
    }

    fn kick_tx(&self) -> io::Result<()> {
        self.kicks.set(self.kicks.get() + 1);
        Ok(())
    }

    fn wake_rx(&self) -> io::Result<()> {
        Ok(())
    }

    fn fd(&self) -> RawFd {
        -1
    }
}
