//! The simulation harness: one worker between a simulated NIC and a simulated disk, the
//! initiators' traffic, the oracle that says what each received frame must produce, and the
//! checks.
//!
//! The oracle is the protocol crate's own `aoe::target::decide`, run on a copy of each frame
//! (its first chunk, or the whole frame for a gathered jumbo write, as the worker sees it) in
//! the order the worker takes frames off the RX ring, against a model of every export's
//! protocol state. It says, per (frame, export), whether the worker must answer at once (and
//! with which bytes), drop the frame, or perform a read, write or flush. What it cannot know is
//! which requests the worker drops for want of a slot or a frame (`no_slot`, `no_frame`); those
//! stay unanswered, and when the worker is drained the unanswered requests must be exactly what
//! those counters say. A config, mask or reserve command that reaches several exports is
//! delivered alone on the RX ring: if the worker had no frame to copy it for one export, the
//! model then takes that export's state from the worker.
//!
//! Replies are matched to waiting requests by (destination, shelf, slot, tag); duplicates share
//! a key, so a reply goes to the first waiting request it is a valid answer for. Immediate
//! replies must match byte for byte. A storage request's reply is OK (a read's data checked) or
//! an ATA error that consumes a failure the disk injected for that request (its "credit").
//! Conflicting requests of one export must be answered in arrival order (the disk checks the
//! stronger rule that they are never outstanding together).
//!
//! Reads are checked against a model of the store in arrival order: sector by sector, the last
//! earlier write of that sector that has been answered (a failed one leaves the sector unknown),
//! else the store's initial pattern. An earlier overlapping write that is still unanswered when
//! a read is answered was dropped, or the worker broke the order (which the ordering checks
//! catch).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use aoe::ata;
use aoe::initiator::parse_response;
use aoe::target::{self, Decision, ExportState, Iface, IoOutcome};
use aoe::wire::{self, cmd, Header, Mac, ATA_HLEN, BROADCAST, ETHERTYPE_AOE, SECTOR};
use xblade::backing::{Backing, BackingConfig, Commit, Durability, IoMode};
use xblade::export::Export;
use xblade::worker::{Bounce, Worker, WorkerSetup, WorkerStats};
use xsk::{Umem, UmemConfig};

use crate::disk::{Credit, DiskParams, Kind, SimDisk};
use crate::net::SimNet;
use crate::rng::Rng;

/// UMEM chunk size (the daemon's).
pub const CHUNK: usize = 4096;
/// The daemon's in-flight table bounds (`daemon::MIN_INFLIGHT`, `MAX_INFLIGHT`).
const MIN_INFLIGHT: usize = 64;
const MAX_INFLIGHT: usize = 1024;
/// Frames a worker takes per loop (`pacing::RX_BATCH`).
const RX_BATCH: usize = 64;
/// The target's MAC.
pub const TARGET_MAC: Mac = [0x02, 0x00, 0x5e, 0x20, 0x00, 0x01];

thread_local! {
    /// (seed, step) of the simulation running on this thread, for the failure report.
    pub static WHERE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// One export of a scenario.
#[derive(Clone, Debug)]
pub struct ExportSpec {
    pub shelf: u16,
    pub slot: u8,
    pub sectors: u64,
    pub read_only: bool,
    pub bufcnt: u16,
    /// Initiators (by index) on the initial mask list; `extra_mask` adds a stranger.
    pub mask: Vec<usize>,
    pub extra_mask: bool,
    pub write_back: bool,
    /// Durable writes carry RWF_DSYNC each instead of waiting for a group commit.
    pub per_write: bool,
    /// Start of the small window most requests go to.
    pub hot: u64,
}

/// Everything a seed decides before the first step.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub mtu: u16,
    pub exports: Vec<ExportSpec>,
    pub initiators: usize,
    pub capacity: usize,
    pub fill: usize,
    pub rx: usize,
    pub tx: usize,
    pub comp: usize,
    /// UMEM frames beyond the fill ring and one request's worth per slot.
    pub spare_frames: usize,
    pub zero_copy: bool,
    pub steps: u64,
    pub quiesce_every: u64,
    /// Chance per step that an initiator sends one request, or a burst.
    pub p_send: f64,
    pub p_burst: f64,
    pub burst: u64,
    /// Chance per step that the NIC transmits nothing; most descriptors it takes per step.
    pub p_stall: f64,
    pub max_tx: usize,
    pub max_turns: u64,
    pub disk: DiskParams,
    /// Traffic mix weights: read, write, flush, identify, config, mask, reserve, other ATA,
    /// malformed, duplicate, re-send, wildcard read, wildcard write.
    pub mix: [u32; 13],
}

impl ExportSpec {
    /// Whether its durable writes are made durable by group commit.
    pub fn group(&self) -> bool {
        !self.write_back && !self.per_write
    }
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn random(seed: u64) -> Scenario {
        let mut r = Rng::new(seed);
        let mtu = match r.below(10) {
            0..=3 => 1500,
            4..=7 => 9000,
            _ => r.range(u64::from(wire::MIN_MTU), 9000) as u16,
        };
        let initiators = r.range(2, 4) as usize;
        let nexports = r.range(1, 3) as usize;
        let mut addrs = Vec::new();
        while addrs.len() < nexports {
            let a = (r.below(3) as u16, r.below(3) as u8);
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let exports: Vec<ExportSpec> = addrs
            .iter()
            .enumerate()
            .map(|(i, &(shelf, slot))| {
                let sectors = r.range(256, 4096);
                let mask = if i == 0 && r.chance(0.5) {
                    (0..initiators).filter(|_| r.chance(0.5)).collect()
                } else {
                    Vec::new()
                };
                ExportSpec {
                    shelf,
                    slot,
                    sectors,
                    read_only: r.chance(0.2),
                    bufcnt: r.pick(&[2, 4, 8, 16, 32, 64]),
                    extra_mask: !mask.is_empty() && r.chance(0.5),
                    mask,
                    write_back: r.chance(0.3),
                    per_write: false,
                    hot: match r.below(10) {
                        0..=4 => 0,
                        5..=7 => r.below(sectors - 40),
                        _ => sectors - 40,
                    },
                }
            })
            .collect();
        let bufcnts: usize = exports.iter().map(|e| usize::from(e.bufcnt)).sum();
        let capacity = if r.chance(0.5) {
            bufcnts.clamp(MIN_INFLIGHT, MAX_INFLIGHT)
        } else {
            r.range(4, 64) as usize
        };
        let p_soft = r.pick(&[0.0, 0.01, 0.05]);
        let mut sc = Scenario {
            mtu,
            exports,
            initiators,
            capacity,
            fill: r.pick(&[16, 64, 256]),
            rx: r.pick(&[8, 64, 256]),
            tx: r.pick(&[4, 16, 64, 256]),
            comp: r.pick(&[4, 16, 64, 256]),
            spare_frames: r.pick(&[16, 32, 256]),
            zero_copy: r.chance(0.5),
            steps: r.range(300, 2000),
            quiesce_every: r.range(150, 900),
            p_send: r.pick(&[0.1, 0.3, 0.6]),
            p_burst: r.pick(&[0.0, 0.01, 0.03]),
            burst: r.range(8, 80),
            p_stall: r.pick(&[0.0, 0.1, 0.5]),
            max_tx: r.pick(&[4, 16, 64, 4096]),
            max_turns: r.range(1, 4),
            disk: DiskParams {
                latency: r.pick(&[0, 1, 4, 16, 64]),
                p_slow: r.pick(&[0.0, 0.02]),
                p_hard: r.pick(&[0.0, 0.002, 0.02]),
                p_soft,
                p_short: 0.5,
                p_stuck: if p_soft > 0.0 {
                    r.pick(&[0.0, 0.05])
                } else {
                    0.0
                },
                p_sqfull: r.pick(&[0.0, 0.01, 0.2]),
                sq_cap: r.pick(&[4, 16, 64, 4096]),
                p_partial_submit: r.pick(&[0.0, 0.1]),
                p_submit_on_push: r.pick(&[0.0, 0.3]),
                p_apply_early: r.pick(&[0.0, 0.3]),
            },
            mix: [380, 280, 20, 20, 30, 20, 20, 20, 80, 40, 30, 20, 10],
        };
        // Drawn last, so that the draws before are those of the seeds kept as regressions.
        for e in &mut sc.exports {
            e.per_write = r.chance(0.3);
        }
        sc
    }
}

/// One initiator.
pub struct Initiator {
    pub mac: Mac,
    pub next_tag: u32,
    /// Recent writes, for re-sends with a new tag.
    pub writes: VecDeque<Rc<[u8]>>,
}

/// A packet on the RX ring (or partly taken by the worker).
pub struct Delivered {
    pub bytes: Rc<[u8]>,
    pub ndesc: usize,
    /// Descriptors the worker has not taken yet.
    pub left: usize,
    /// A state-changing command that reaches several exports: delivered alone.
    pub solo: bool,
}

/// Replies are matched by (destination, shelf, slot, tag).
type Key = (Mac, u16, u8, u32);

fn key_of(reply: &[u8]) -> Key {
    let h = Header::new(reply).expect("replies are at least 60 bytes");
    (h.dst(), h.shelf(), h.slot(), h.tag())
}

/// What a (frame, export) pair must produce.
pub enum Expect {
    /// This reply, byte for byte.
    Reply(Vec<u8>),
    /// A storage request.
    Io(Box<Io>),
}

pub struct Io {
    pub decision: Decision,
    pub header: [u8; ATA_HLEN],
    /// Its record in the export's write list.
    pub write: Option<usize>,
    /// A read answered in several TX descriptors.
    pub jumbo: bool,
    /// A write that arrived in several RX descriptors (gathered into a bounce slot).
    pub gathered: bool,
    pub step: u64,
}

pub struct Pair {
    pub key: Key,
    pub export: usize,
    pub arrival: u64,
    pub expect: Expect,
    pub answered: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WStatus {
    Pending,
    Ok,
    Failed,
}

pub struct WriteRec {
    pub arrival: u64,
    pub lba: u64,
    pub payload: Rc<[u8]>,
    pub status: WStatus,
}

/// A failed reply to a write of a group-committing export.
#[derive(Clone, Copy, Debug)]
pub struct GroupFailure {
    pub file: u32,
    pub lo: u64,
    pub hi: u64,
    /// The earliest arrival (step) of a request with its key.
    pub since: u64,
    pub eio: bool,
    pub arrival: u64,
}

impl GroupFailure {
    /// Whether a failure of one of the write's own operations may explain it (issued after it
    /// arrived; the disk's clock is one step behind while the worker turns).
    fn fits(&self, c: &Credit) -> bool {
        c.file == self.file
            && c.kind == Kind::Write
            && !c.chunk_op
            && (c.errno == libc::EIO) == self.eio
            && c.offset == self.lo
            && u64::from(c.len) == self.hi - self.lo
            && c.step + 1 >= self.since
    }

    /// Whether a failed group commit may explain it (the worker learned of it after the write
    /// arrived).
    fn fits_commit(&self, c: &Credit) -> bool {
        c.file == self.file && c.step >= self.since && (c.errno == libc::EIO) == self.eio
    }
}

/// A storage request as far as ordering goes (sectors `first..=last`).
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub kind: Kind,
    pub first: u64,
    pub last: u64,
}

fn conflicts(a: Span, b: Span) -> bool {
    (a.kind == Kind::Write || b.kind == Kind::Write) && a.first <= b.last && b.first <= a.last
}

fn span_of(d: &Decision) -> Span {
    match *d {
        Decision::Read { lba, sectors } => Span {
            kind: Kind::Read,
            first: lba,
            last: lba + u64::from(sectors) - 1,
        },
        Decision::Write { lba, sectors, .. } => Span {
            kind: Kind::Write,
            first: lba,
            last: lba + u64::from(sectors) - 1,
        },
        _ => Span {
            kind: Kind::Fsync,
            first: 0,
            last: u64::MAX,
        },
    }
}

#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub offered: u64,
    pub delivered: u64,
    pub nic_drops: u64,
    pub solo_skipped: u64,
    pub descs: u64,
    pub oracle_drops: u64,
    /// Predicted drops the worker never decided (a wildcard copy it had no frame for).
    pub lost_drops: u64,
    pub pairs: u64,
    pub answered: u64,
    pub open_io: u64,
    pub ok_reads: u64,
    pub ok_writes: u64,
    pub ok_flushes: u64,
    pub failed: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub jumbo_reads: u64,
    pub gathered: u64,
    pub tx_descs: u64,
    pub replies: u64,
    pub resyncs: u64,
    pub quiesces: u64,
    /// Acknowledged writes of durable exports checked against what a power cut would leave.
    pub durable_checked: u64,
    pub data_sectors: u64,
    /// Export-list changes handed to the worker (its own list again) and applied.
    pub switches: u64,
    pub switched: u64,
    /// Changes withdrawn before the worker applied them.
    pub cancels: u64,
}

/// Content of a sector written by content id `content` at `lba`: the id and the LBA, then a
/// stream derived from both (so a misplaced or stale sector says where it came from).
pub fn content_sector(content: u64, lba: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&content.to_le_bytes());
    out[8..16].copy_from_slice(&lba.to_le_bytes());
    let mut r = Rng::new(content.wrapping_mul(0x9E37_79B9).wrapping_add(lba));
    for w in out[16..SECTOR].chunks_mut(8) {
        w.copy_from_slice(&r.next_u64().to_le_bytes()[..w.len()]);
    }
}

/// The initial content of export `e`'s sector `lba`.
pub fn initial_sector(e: usize, lba: u64, out: &mut [u8]) {
    content_sector(INITIAL | e as u64, lba, out)
}

const INITIAL: u64 = 0xF1F1_0000_0000_0000;

fn describe_sector(s: &[u8]) -> String {
    let id = u64::from_le_bytes(s[..8].try_into().unwrap());
    let lba = u64::from_le_bytes(s[8..16].try_into().unwrap());
    let mut want = [0u8; SECTOR];
    content_sector(id, lba, &mut want);
    if want[..] == s[..SECTOR] {
        if id & INITIAL == INITIAL {
            format!("initial content of export {} sector {lba}", id & 0xff)
        } else {
            format!("content #{id} written for sector {lba}")
        }
    } else {
        format!("unrecognised bytes {:02x?}…", &s[..16])
    }
}

pub struct Sim {
    pub seed: u64,
    pub sc: Scenario,
    pub rng: Rng,
    pub worker: Worker<SimNet, SimDisk>,
    pub exports: Vec<Arc<Export>>,
    /// The model of each export's protocol state.
    pub states: Vec<ExportState>,
    seen_versions: Vec<u64>,
    model_changed: Vec<bool>,
    pub iface: Iface,
    pub rx_offset: usize,
    pub multi: bool,
    pub bounce_slot: usize,
    pub frame_count: usize,
    pub inis: Vec<Initiator>,
    pub step: u64,
    pub poison: u8,
    pub delivered: VecDeque<Delivered>,
    pub solo_pending: bool,
    pub recent: VecDeque<Rc<[u8]>>,
    pub next_content: u64,
    arrival: u64,
    pairs: Vec<Pair>,
    open: HashMap<Key, Vec<usize>>,
    writes: Vec<Vec<WriteRec>>,
    /// Per export, per sector: the write records covering it, in arrival order.
    history: Vec<Vec<Vec<u32>>>,
    /// Per export: answered storage requests by arrival.
    answered_io: Vec<BTreeMap<u64, Vec<Span>>>,
    /// Chunk credits consumed by failed multi-chunk reads: (file, first byte, end, step).
    consumed_chunk_credits: Vec<(u32, u64, u64, u64)>,
    /// Failed replies to writes of group-committing exports, matched to credits at drains.
    group_failures: Vec<GroupFailure>,
    pub c: Counters,
    /// Runtime export-list changes: their own random stream (so the scenario and traffic of a
    /// seed are what they were before this existed), and the last generation handed over.
    switch_rng: Rng,
    generation: u64,
    last_cancelled: bool,
    mark: Vec<u64>,
    mark_stamp: u64,
    _dir: tempfile::TempDir,
}

/// Chance per step of a runtime export-list change.
const P_SWITCH: f64 = 0.004;

/// Fails the simulation with the seed and step.
macro_rules! fail {
    ($sim:expr, $($arg:tt)*) => {
        panic!("seed {} step {}: {}", $sim.seed, $sim.step, format!($($arg)*))
    };
}

impl Sim {
    pub fn new(seed: u64, sc: Scenario) -> Sim {
        let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let inis: Vec<Initiator> = (0..sc.initiators)
            .map(|i| Initiator {
                mac: [0x02, 0x00, 0x5e, 0x10, 0x00, i as u8 + 1],
                next_tag: (rng.next_u64() as u32) | 1,
                writes: VecDeque::new(),
            })
            .collect();
        let stranger: Mac = [0x02, 0x00, 0x5e, 0x30, 0x00, 0x09];
        let mut exports = Vec::new();
        let mut states = Vec::new();
        let mut stores = Vec::new();
        let mut sync = Vec::new();
        for (e, spec) in sc.exports.iter().enumerate() {
            let path = dir.path().join(format!("e{e}.img"));
            let f = std::fs::File::create(&path).expect("create store");
            f.set_len(spec.sectors * SECTOR as u64).expect("size store");
            let mut bcfg = BackingConfig::new(&path);
            bcfg.io = IoMode::Buffered;
            bcfg.read_only = spec.read_only;
            bcfg.durability = if spec.write_back {
                Durability::WriteBack
            } else {
                Durability::Sync
            };
            bcfg.commit = Some(if spec.per_write {
                Commit::PerWrite
            } else {
                Commit::Group
            });
            let backing = Backing::open(&bcfg).expect("open backing");
            let mut st = ExportState::new(spec.shelf, spec.slot, spec.sectors);
            st.read_only = spec.read_only;
            st.bufcnt = spec.bufcnt;
            st.write_cache = spec.write_back;
            st.mask = spec.mask.iter().map(|&i| inis[i].mac).collect();
            if spec.extra_mask {
                st.mask.push(stranger);
            }
            states.push(st.clone());
            exports.push(Arc::new(Export::new(st, backing).expect("export")));
            let mut store = vec![0u8; spec.sectors as usize * SECTOR];
            for (lba, s) in store.chunks_mut(SECTOR).enumerate() {
                initial_sector(e, lba as u64, s);
            }
            stores.push(store);
            let group = exports
                .last()
                .is_some_and(|x: &Arc<Export>| x.group_commit());
            sync.push((!spec.write_back, group));
        }
        let iface = Iface {
            mac: TARGET_MAC,
            mtu: sc.mtu,
        };
        let ucfg = UmemConfig {
            frame_count: 0,
            chunk_size: CHUNK as u32,
            fill_size: sc.fill.next_power_of_two() as u32,
            comp_size: sc.comp.next_power_of_two() as u32,
            ..UmemConfig::default()
        };
        let rx_offset = ucfg.rx_offset() as usize;
        let max_frame = usize::from(sc.mtu) + wire::ETH_HLEN;
        let multi = max_frame > CHUNK - rx_offset;
        // As the daemon sizes them (`daemon::ops_per_request`, the UMEM and the bounce slots).
        let ops = if multi {
            (usize::from(sc.mtu) - (ATA_HLEN - wire::ETH_HLEN)).div_ceil(CHUNK)
        } else {
            1
        };
        let frame_count = sc.fill + sc.capacity * ops + sc.spare_frames;
        let umem = Umem::new(UmemConfig {
            frame_count: frame_count as u32,
            ..ucfg
        })
        .expect("UMEM");
        let bounce_slot = (rx_offset + max_frame).div_ceil(CHUNK) * CHUNK;
        let bounce = multi.then(|| Bounce::new(sc.capacity, bounce_slot).expect("bounce"));
        let (ub, ul) = umem.area();
        let bounce_area = bounce
            .as_ref()
            .map(|b| (b.area().0 as usize, bounce_slot, sc.capacity));
        let disk = SimDisk::new(
            stores,
            sync,
            sc.disk.clone(),
            rng.fork(),
            (ub as usize, ul),
            CHUNK,
            bounce_area,
        );
        let net = SimNet {
            umem,
            chunk: CHUNK,
            fill: VecDeque::new(),
            fill_cap: sc.fill,
            rx: VecDeque::new(),
            rx_cap: sc.rx,
            tx: VecDeque::new(),
            tx_cap: sc.tx,
            comp: VecDeque::new(),
            comp_cap: sc.comp,
            zero_copy: sc.zero_copy,
            recv_max: None,
            kicks: Cell::new(0),
        };
        let mut worker = Worker::new(WorkerSetup {
            ifname: "sim0".into(),
            queue: 0,
            iface,
            exports: exports.clone(),
            net,
            storage: disk,
            bounce,
            capacity: sc.capacity,
        });
        worker.start();
        let n = exports.len();
        let history = sc
            .exports
            .iter()
            .map(|s| vec![Vec::new(); s.sectors as usize])
            .collect();
        let mut sim = Sim {
            seed,
            poison: rng.next_u64() as u8,
            rng,
            worker,
            seen_versions: exports.iter().map(|e| e.version()).collect(),
            model_changed: vec![false; n],
            exports,
            states,
            iface,
            rx_offset,
            multi,
            bounce_slot,
            frame_count,
            inis,
            step: 0,
            delivered: VecDeque::new(),
            solo_pending: false,
            recent: VecDeque::new(),
            next_content: 1,
            arrival: 0,
            pairs: Vec::new(),
            open: HashMap::new(),
            writes: (0..n).map(|_| Vec::new()).collect(),
            history,
            answered_io: (0..n).map(|_| BTreeMap::new()).collect(),
            consumed_chunk_credits: Vec::new(),
            group_failures: Vec::new(),
            c: Counters::default(),
            switch_rng: Rng::new(seed ^ 0x5357_4954_4348_4553),
            generation: 0,
            last_cancelled: false,
            mark: vec![0; frame_count],
            mark_stamp: 0,
            _dir: dir,
            sc,
        };
        // The start-up announcements: to broadcast, or to each MAC of the mask list.
        for e in 0..n {
            let st = sim.states[e].clone();
            let dsts = if st.mask.is_empty() {
                vec![BROADCAST]
            } else {
                st.mask.clone()
            };
            for dst in dsts {
                let mut buf = vec![0u8; CHUNK];
                let len = target::advertisement(&st, &sim.iface, dst, &mut buf);
                buf.truncate(len);
                sim.expect_reply(e, buf);
            }
        }
        sim
    }

    /// The scenario's whole run: steps with drains in between, a final drain, the frame count.
    pub fn run(&mut self) {
        let mut next_drain = self.sc.quiesce_every;
        while self.step < self.sc.steps {
            self.generate();
            self.step();
            if self.step >= next_drain {
                self.drain();
                next_drain = self.step + self.sc.quiesce_every;
            }
        }
        self.drain();
        self.check_frames();
        let applied = self.switches_applied();
        if self.last_cancelled && applied >= self.generation {
            fail!(
                self,
                "the worker applied export-list change {applied}, which was withdrawn"
            );
        }
        if !self.last_cancelled && applied != self.generation {
            fail!(
                self,
                "the worker applied export-list change {applied} of {} after draining",
                self.generation
            );
        }
    }

    /// One step: the worker turns, the disk's clock ticks, the NIC transmits.
    pub fn step(&mut self) {
        self.step += 1;
        WHERE.with(|w| w.set((self.seed, self.step)));
        if self.switch_rng.chance(P_SWITCH) {
            self.switch_exports();
        }
        let turns = self.rng.range(1, self.sc.max_turns);
        self.turns(turns, true);
        self.worker.storage_mut().tick(self.step);
        let max = if self.rng.chance(self.sc.p_stall) {
            0
        } else {
            self.rng.range(1, self.sc.max_tx as u64) as usize
        };
        self.transmit(max);
        self.check_memory();
    }

    /// Hand the worker its own export list again, as `xblade add`/`remove` hands a changed
    /// one: it must stop taking requests, drain, rebuild its tables and go on, with nothing
    /// lost, misordered or answered twice (the oracle's invariants hold throughout).
    ///
    /// Like the control plane, it hands one change at a time; while one is pending it may give
    /// up on it instead (as after its timeout): the worker must then never apply it, and take
    /// requests again.
    fn switch_exports(&mut self) {
        let control = self.worker.control();
        let pending = control.lock().applied < self.generation && !self.last_cancelled;
        if pending {
            if self.switch_rng.chance(0.5) {
                let mut s = control.lock();
                if s.applied < self.generation {
                    s.cancelled = self.generation;
                    s.change = None;
                    self.last_cancelled = true;
                    self.c.cancels += 1;
                }
                drop(s);
                control.ask();
            }
            return;
        }
        self.generation += 1;
        self.last_cancelled = false;
        control.lock().change = Some((self.generation, self.exports.clone()));
        control.ask();
        self.c.switches += 1;
    }

    /// How many export-list changes the worker has applied.
    pub fn switches_applied(&self) -> u64 {
        self.worker.control().lock().applied
    }

    /// A packet from an initiator reaches the NIC. Returns false when a packet that must be
    /// alone on the RX ring was delivered (nothing more may follow until it is taken).
    pub fn offer(&mut self, bytes: Vec<u8>) -> bool {
        let solo = self.is_solo(&bytes);
        if solo && !self.delivered.is_empty() {
            self.c.solo_skipped += 1;
            return true;
        }
        self.c.offered += 1;
        let bytes: Rc<[u8]> = bytes.into();
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(bytes.clone());
        let (off, multi, poison) = (self.rx_offset, self.multi, self.poison);
        match self.worker.net_mut().deliver(&bytes, off, multi, poison) {
            Some(ndesc) => {
                self.c.delivered += 1;
                self.delivered.push_back(Delivered {
                    bytes,
                    ndesc,
                    left: ndesc,
                    solo,
                });
                if solo {
                    self.solo_pending = true;
                    return false;
                }
            }
            None => self.c.nic_drops += 1,
        }
        true
    }

    /// A config, mask or reserve command reaching several exports: if the worker has no frame
    /// to copy it for one of them, that export's state does not change; delivered alone, the
    /// model can tell.
    fn is_solo(&self, bytes: &[u8]) -> bool {
        let first = &bytes[..bytes.len().min(CHUNK - self.rx_offset)];
        match Header::new(first) {
            Some(h)
                if h.ethertype() == ETHERTYPE_AOE
                    && !h.is_response()
                    && matches!(h.command(), cmd::CONFIG | cmd::MASK | cmd::RESERVE) =>
            {
                self.exports
                    .iter()
                    .filter(|e| e.addressed(h.shelf(), h.slot()))
                    .count()
                    > 1
            }
            _ => false,
        }
    }

    /// Up to `max` worker loops (fewer when one finds no work), each followed by the oracle
    /// for the frames it took.
    pub fn turns(&mut self, max: u64, take: bool) {
        for _ in 0..max {
            let before = self.worker.stats().clone();
            let rx_before = self.worker.net().rx.len();
            let work = match self.worker.turn(take) {
                Ok(w) => w,
                Err(e) => fail!(self, "turn failed: {e}"),
            };
            self.worker.pace(!work);
            let consumed = rx_before - self.worker.net().rx.len();
            self.after_turn(&before, consumed);
            if !work {
                break;
            }
        }
    }

    fn after_turn(&mut self, before: &WorkerStats, consumed: usize) {
        let st = self.worker.stats().clone();
        if st.rx_frames - before.rx_frames != consumed as u64 {
            fail!(
                self,
                "rx_frames grew by {} but the worker took {consumed} descriptors",
                st.rx_frames - before.rx_frames
            );
        }
        self.c.descs += consumed as u64;
        let mut left = consumed;
        let mut drops = 0;
        let mut solo = false;
        while left > 0 {
            let Some(d) = self.delivered.front_mut() else {
                fail!(self, "the worker took descriptors nobody delivered");
            };
            let k = left.min(d.left);
            d.left -= k;
            left -= k;
            if d.left == 0 {
                let d = self.delivered.pop_front().expect("front");
                solo |= d.solo;
                drops += self.arrive(&d.bytes, d.ndesc);
            }
        }
        if self.delivered.is_empty() {
            self.solo_pending = false;
        }
        let dropped = st.dropped - before.dropped;
        let no_frame = st.no_frame - before.no_frame;
        // A wildcard copy the worker had no frame for is never decided: a predicted drop of it
        // is counted in `no_frame` instead.
        if dropped > drops || drops - dropped > no_frame {
            fail!(
                self,
                "the worker dropped {dropped} frames this loop (no_frame +{no_frame}); the oracle says {drops}"
            );
        }
        self.c.oracle_drops += drops;
        self.c.lost_drops += drops - dropped;
        for e in 0..self.exports.len() {
            let v = self.exports[e].version();
            if v == self.seen_versions[e] && !self.model_changed[e] {
                continue;
            }
            self.seen_versions[e] = v;
            self.model_changed[e] = false;
            let real = self.exports[e].snapshot().1;
            let m = &self.states[e];
            if real.config != m.config || real.mask != m.mask || real.reserve != m.reserve {
                if solo && no_frame > 0 {
                    // The copy for this export was lost (counted in `no_frame`).
                    self.states[e] = real;
                    self.c.resyncs += 1;
                } else {
                    fail!(
                        self,
                        "export {e} state differs from the model: worker config {:?} mask {:?} reserve {:?}, model config {:?} mask {:?} reserve {:?}",
                        String::from_utf8_lossy(&real.config),
                        real.mask,
                        real.reserve,
                        String::from_utf8_lossy(&m.config),
                        m.mask,
                        m.reserve
                    );
                }
            }
        }
        let in_flight = self.worker.in_flight() as u64;
        if in_flight > self.c.open_io {
            fail!(
                self,
                "the worker holds {in_flight} requests but only {} accepted storage requests are unanswered",
                self.c.open_io
            );
        }
    }

    /// The oracle for one frame the worker took whole: what it must do for each export.
    /// Returns the (frame, export) drops it must count.
    fn arrive(&mut self, bytes: &[u8], ndesc: usize) -> u64 {
        self.arrival += 1;
        let room = CHUNK - self.rx_offset;
        let first = &bytes[..bytes.len().min(room)];
        // `request::receive_fragments`: a write split over several descriptors is gathered.
        let gathered = ndesc > 1
            && first.len() >= ATA_HLEN
            && first[12..14] == ETHERTYPE_AOE.to_be_bytes()
            && first[19] == cmd::ATA
            && matches!(first[27], ata::WRITE | ata::WRITE_EXT);
        let Some(h) = Header::new(first) else {
            return 1;
        };
        if h.ethertype() != ETHERTYPE_AOE || h.is_response() {
            return 1;
        }
        let targets: Vec<usize> = (0..self.exports.len())
            .filter(|&i| self.exports[i].addressed(h.shelf(), h.slot()))
            .collect();
        if targets.is_empty() {
            return 1;
        }
        let mut drops = 0;
        for e in targets {
            let (mut buf, len) = if gathered {
                let mut b = vec![self.poison; self.bounce_slot - self.rx_offset];
                b[..bytes.len()].copy_from_slice(bytes);
                (b, bytes.len())
            } else {
                let mut b = vec![self.poison; room];
                b[..first.len()].copy_from_slice(first);
                (b, first.len())
            };
            let out = target::decide(&self.states[e], &self.iface, &mut buf, len);
            if let Some(change) = out.change {
                self.states[e].apply(change);
                self.model_changed[e] = true;
            }
            match out.decision {
                Decision::Drop => drops += 1,
                Decision::Reply(n) => {
                    buf.truncate(n.min(room));
                    self.expect_reply(e, buf);
                }
                d => self.expect_io(e, d, &buf, gathered),
            }
        }
        drops
    }

    fn expect_reply(&mut self, e: usize, bytes: Vec<u8>) {
        let key = key_of(&bytes);
        self.add_pair(Pair {
            key,
            export: e,
            arrival: self.arrival,
            expect: Expect::Reply(bytes),
            answered: false,
        });
    }

    fn expect_io(&mut self, e: usize, d: Decision, buf: &[u8], gathered: bool) {
        let h = Header::new(buf).expect("a storage request has a header");
        let key = (h.src(), self.states[e].shelf, self.states[e].slot, h.tag());
        let mut header = [0u8; ATA_HLEN];
        header.copy_from_slice(&buf[..ATA_HLEN]);
        let mut write = None;
        let mut jumbo = false;
        match &d {
            Decision::Read { sectors, .. } => {
                jumbo = ATA_HLEN + usize::from(*sectors) * SECTOR > CHUNK - self.rx_offset;
            }
            Decision::Write {
                lba,
                sectors,
                payload,
            } => {
                let idx = self.writes[e].len();
                for s in *lba..*lba + u64::from(*sectors) {
                    self.history[e][s as usize].push(idx as u32);
                }
                self.writes[e].push(WriteRec {
                    arrival: self.arrival,
                    lba: *lba,
                    payload: buf[payload.clone()].into(),
                    status: WStatus::Pending,
                });
                write = Some(idx);
            }
            _ => {}
        }
        self.c.open_io += 1;
        self.add_pair(Pair {
            key,
            export: e,
            arrival: self.arrival,
            expect: Expect::Io(Box::new(Io {
                decision: d,
                header,
                write,
                jumbo,
                gathered,
                step: self.step,
            })),
            answered: false,
        });
    }

    fn add_pair(&mut self, p: Pair) {
        let idx = self.pairs.len();
        self.open.entry(p.key).or_default().push(idx);
        self.pairs.push(p);
        self.c.pairs += 1;
    }

    /// The NIC transmits up to `max` descriptors; every packet is checked as a reply.
    pub fn transmit(&mut self, max: usize) {
        if max == 0 {
            return;
        }
        let mut out = Vec::new();
        let n = self.worker.net_mut().transmit(max, &mut out);
        self.c.tx_descs += n as u64;
        for r in out {
            self.on_reply(r);
        }
    }

    fn on_reply(&mut self, bytes: Vec<u8>) {
        self.c.replies += 1;
        let max = self.iface.max_frame();
        if bytes.len() < wire::ETH_ZLEN || bytes.len() > max {
            fail!(
                self,
                "a {}-byte reply (allowed: 60..={max}): {:02x?}",
                bytes.len(),
                &bytes[..bytes.len().min(40)]
            );
        }
        let resp = match parse_response(&bytes) {
            Ok(r) => r,
            Err(e) => fail!(self, "an unparsable reply ({e:?}): {:02x?}", &bytes[..40]),
        };
        if resp.src != self.iface.mac {
            fail!(self, "a reply from {:02x?}, not the target's MAC", resp.src);
        }
        let key = key_of(&bytes);
        let cands = self.open.get(&key).cloned().unwrap_or_default();
        if cands.is_empty() {
            let answered = self
                .pairs
                .iter()
                .filter(|p| p.key == key && p.answered)
                .count();
            fail!(
                self,
                "a reply nobody is waiting for (dst {:02x?} e{}.{} tag {:#x} cmd {}; {answered} request(s) with that key already answered): {:02x?}",
                key.0,
                key.1,
                key.2,
                key.3,
                bytes[19],
                &bytes[..bytes.len().min(48)]
            );
        }
        let mut why = Vec::new();
        for idx in cands {
            match self.verify(idx, &bytes) {
                Ok(v) => return self.commit(idx, v),
                Err(e) => why.push(format!("request #{}: {e}", self.pairs[idx].arrival)),
            }
        }
        fail!(
            self,
            "a reply matches no waiting request (dst {:02x?} e{}.{} tag {:#x}): {}",
            key.0,
            key.1,
            key.2,
            key.3,
            why.join("; ")
        );
    }

    fn verify(&mut self, idx: usize, bytes: &[u8]) -> Result<Verdict, String> {
        let p = &self.pairs[idx];
        let io = match &p.expect {
            Expect::Reply(want) => {
                if want[..] == bytes[..] {
                    return Ok(Verdict::Reply);
                }
                let at = want.iter().zip(bytes).position(|(a, b)| a != b);
                return Err(format!(
                    "expected a {}-byte reply, got {} bytes (first difference at {at:?}): want {:02x?}, got {:02x?}",
                    want.len(),
                    bytes.len(),
                    &want[..want.len().min(48)],
                    &bytes[..bytes.len().min(48)]
                ));
            }
            Expect::Io(io) => io,
        };
        if bytes[19] != cmd::ATA || bytes.len() < ATA_HLEN {
            return Err("a storage request answered with a non-ATA reply".into());
        }
        let e = p.export;
        // Conflicting requests of one export are answered in arrival order: this reply cannot
        // be for a request that arrived before one it conflicts with that is answered already
        // (a duplicate whose earlier copy was dropped, or an ordering bug).
        let span = span_of(&io.decision);
        let later = self.answered_io[e]
            .range(p.arrival + 1..)
            .flat_map(|(&a, spans)| spans.iter().map(move |&s| (a, s)))
            .find(|&(_, s)| conflicts(span, s));
        if let Some((a, s)) = later {
            return Err(format!(
                "export {e}: {:?} {}..={} would be answered after the later conflicting request #{a} ({:?} {}..={}): arrival order broken",
                span.kind, span.first, span.last, s.kind, s.first, s.last
            ));
        }
        let mut want = vec![0u8; 64];
        want[..ATA_HLEN].copy_from_slice(&io.header);
        let status = bytes[27];
        if status == ata::STATUS_OK {
            let n = target::complete(
                &self.states[e],
                &self.iface,
                &mut want,
                &io.decision,
                IoOutcome::Ok,
            );
            if bytes.len() != n {
                return Err(format!(
                    "a successful {:?} answered in {} bytes, expected {n}",
                    span_of(&io.decision).kind,
                    bytes.len()
                ));
            }
            if bytes[..ATA_HLEN] != want[..ATA_HLEN] {
                return Err(format!(
                    "header {:02x?}, expected {:02x?}",
                    &bytes[..ATA_HLEN],
                    &want[..ATA_HLEN]
                ));
            }
            match io.decision {
                Decision::Read { lba, sectors } => {
                    self.check_data(e, lba, u64::from(sectors), p.arrival, &bytes[ATA_HLEN..])?
                }
                _ => {
                    if bytes[ATA_HLEN..] != want[ATA_HLEN..n] {
                        return Err("padding is not zero".into());
                    }
                }
            }
            return Ok(Verdict::Ok);
        }
        if status != ata::STATUS_FAIL || !matches!(bytes[25], ata::ERR_UNC | ata::ERR_ABRT) {
            return Err(format!(
                "a storage request answered with status {status:#x} error {:#x}",
                bytes[25]
            ));
        }
        let eio = bytes[25] == ata::ERR_UNC;
        let errno = if eio { libc::EIO } else { libc::ENOSPC };
        let n = target::complete(
            &self.states[e],
            &self.iface,
            &mut want,
            &io.decision,
            IoOutcome::Err(errno),
        );
        if bytes[..] != want[..n] {
            return Err(format!(
                "a failed request answered {:02x?}, expected {:02x?}",
                &bytes[..bytes.len().min(60)],
                &want[..n]
            ));
        }
        let file = e as u32;
        let (lo, hi) = (
            span.first.saturating_mul(512),
            span.last.saturating_add(1).saturating_mul(512),
        );
        let class = |c: &Credit| (c.errno == libc::EIO) == eio;
        let credits = &self.worker.storage_mut().credits;
        let mut found = Vec::new();
        match io.decision {
            Decision::Read { .. } if io.jumbo => {
                // One credit per data chunk at most; of any age (a duplicate of this read may
                // have been answered in its place).
                let mut at = lo;
                while at < hi {
                    if let Some(i) = (0..credits.len()).find(|&i| {
                        let c = &credits[i];
                        c.file == file && c.kind == Kind::Read && c.chunk_op && c.offset == at
                    }) {
                        found.push(i);
                    }
                    at += CHUNK as u64;
                }
                if !found.iter().any(|&i| class(&credits[i])) {
                    found.clear();
                }
                if found.is_empty()
                    && self
                        .consumed_chunk_credits
                        .iter()
                        .any(|&(f, a, b, s)| f == file && a < hi && lo < b && s + 1 >= io.step)
                {
                    return Ok(Verdict::Fail(Vec::new()));
                }
            }
            Decision::Write { .. } if self.sc.exports[e].group() => {
                // A write of a group-committing export fails with its own operation, or with a
                // group commit (one that covered it, or any while it was issued: see
                // `worker::commit`); which one cannot always be told from here (duplicates and
                // re-sends of one write share its sectors, and their replies may be answered in
                // each other's place), so the failures are matched to the credits when the
                // worker is drained (`match_group_failures`). Here: some credit must fit.
                let f = self.group_failure(idx, lo, hi, eio);
                let disk = self.worker.storage_mut();
                if disk.credits.iter().any(|c| f.fits(c))
                    || disk.commit_credits.iter().any(|c| f.fits_commit(c))
                {
                    self.group_failures.push(f);
                    return Ok(Verdict::Fail(Vec::new()));
                }
            }
            _ => {
                if let Some(i) = (0..credits.len()).find(|&i| {
                    let c = &credits[i];
                    c.file == file
                        && c.kind == span.kind
                        && !c.chunk_op
                        && class(c)
                        && (c.kind == Kind::Fsync
                            || (c.offset == lo && u64::from(c.len) == hi - lo))
                }) {
                    found.push(i);
                }
            }
        }
        let credits = &self.worker.storage_mut().credits;
        if found.is_empty() {
            let near: Vec<String> = credits
                .iter()
                .filter(|c| c.file == file)
                .map(|c| {
                    format!(
                        "{:?}@{}+{} errno {} step {}{}",
                        c.kind,
                        c.offset,
                        c.len,
                        c.errno,
                        c.step,
                        if c.chunk_op { " (chunk)" } else { "" }
                    )
                })
                .collect();
            return Err(format!(
                "{:?} (arrived at step {}) answered {} but the disk injected no such failure for it (unreported failures of this file: [{}])",
                io.decision,
                io.step,
                if eio { "UNC (EIO)" } else { "ABRT" },
                near.join(", ")
            ));
        }
        Ok(Verdict::Fail(found))
    }

    /// A failed reply to the write in pair `idx` (sectors' bytes `lo..hi`): what may explain it.
    fn group_failure(&self, idx: usize, lo: u64, hi: u64, eio: bool) -> GroupFailure {
        // The reply may be a duplicate's (same key) answered in this one's place: from the
        // earliest such arrival.
        let key = self.pairs[idx].key;
        let since = self
            .pairs
            .iter()
            .filter(|q| q.key == key)
            .filter_map(|q| match &q.expect {
                Expect::Io(io) => Some(io.step),
                Expect::Reply(_) => None,
            })
            .min()
            .unwrap_or(0);
        GroupFailure {
            file: self.pairs[idx].export as u32,
            lo,
            hi,
            since,
            eio,
            arrival: self.pairs[idx].arrival,
        }
    }

    /// The failed replies to writes of group-committing exports against the failures the disk
    /// injected: each write failure of its own is reported by a reply of its own, and every
    /// other failed reply is a group commit's that failed after the write arrived.
    fn match_group_failures(&mut self) {
        let failures = std::mem::take(&mut self.group_failures);
        let disk = self.worker.storage_mut();
        let own: Vec<usize> = (0..disk.credits.len())
            .filter(|&i| failures.iter().any(|f| f.fits(&disk.credits[i])))
            .collect();
        let fits = |r: usize, k: usize| failures[r].fits(&disk.credits[own[k]]);
        let flexible: Vec<bool> = failures
            .iter()
            .map(|f| disk.commit_credits.iter().any(|c| f.fits_commit(c)))
            .collect();
        // A matching of replies and own credits that takes every reply no failed commit
        // explains, and every own credit (first the former, then augmenting from the credits,
        // which keeps every matched reply matched).
        let mut reply_of: Vec<Option<usize>> = vec![None; own.len()];
        let mut credit_of: Vec<Option<usize>> = vec![None; failures.len()];
        // One augmenting-path step from `u` on one side to the other side (`mate_of_u`: its
        // side's partners; `fits(u, v)`).
        fn augment(
            u: usize,
            fits: &dyn Fn(usize, usize) -> bool,
            mate_of_u: &mut [Option<usize>],
            mate_of_v: &mut [Option<usize>],
            seen: &mut [bool],
        ) -> bool {
            for v in 0..mate_of_v.len() {
                if seen[v] || !fits(u, v) {
                    continue;
                }
                seen[v] = true;
                if mate_of_v[v].is_none_or(|u2| augment(u2, fits, mate_of_u, mate_of_v, seen)) {
                    mate_of_v[v] = Some(u);
                    mate_of_u[u] = Some(v);
                    return true;
                }
            }
            false
        }
        for (r, &flex) in flexible.iter().enumerate() {
            if !flex {
                let mut seen = vec![false; own.len()];
                augment(r, &fits, &mut credit_of, &mut reply_of, &mut seen);
            }
        }
        for k in 0..own.len() {
            if reply_of[k].is_none() {
                let mut seen = vec![false; failures.len()];
                let fits = |k: usize, r: usize| fits(r, k);
                augment(k, &fits, &mut reply_of, &mut credit_of, &mut seen);
            }
        }
        let unexplained = (0..failures.len()).find(|&r| credit_of[r].is_none() && !flexible[r]);
        // A credit no reply took stays, and is reported as never reported.
        let mut gone: Vec<usize> = (0..own.len())
            .filter(|&k| reply_of[k].is_some())
            .map(|k| own[k])
            .collect();
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            disk.credits.remove(i);
        }
        if let Some(r) = unexplained {
            let f = failures[r];
            fail!(
                self,
                "the write that arrived #{} (export {}, bytes {}..{}) failed, but no failure the disk injected is left to explain it",
                f.arrival,
                f.file,
                f.lo,
                f.hi
            );
        }
    }

    /// A read's data against the model of the store at the read's arrival.
    fn check_data(
        &self,
        e: usize,
        lba: u64,
        n: u64,
        arrival: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let mut want = [0u8; SECTOR];
        for i in 0..n {
            let s = lba + i;
            let got = &data[i as usize * SECTOR..(i as usize + 1) * SECTOR];
            let mut expected = None;
            for &w in self.history[e][s as usize].iter().rev() {
                let r = &self.writes[e][w as usize];
                if r.arrival >= arrival || r.status == WStatus::Pending {
                    continue;
                }
                expected = Some(w as usize);
                break;
            }
            let ok = match expected {
                None => {
                    initial_sector(e, s, &mut want);
                    got == want
                }
                Some(w) => {
                    let r = &self.writes[e][w];
                    if r.status == WStatus::Failed {
                        true
                    } else {
                        let at = (s - r.lba) as usize * SECTOR;
                        got == &r.payload[at..at + SECTOR]
                    }
                }
            };
            if !ok {
                let wanted = match expected {
                    None => "the initial content".to_string(),
                    Some(w) => format!(
                        "{} of the write that arrived #{}",
                        describe_sector(
                            &self.writes[e][w].payload
                                [(s - self.writes[e][w].lba) as usize * SECTOR..]
                        ),
                        self.writes[e][w].arrival
                    ),
                };
                let recent: Vec<String> = self.history[e][s as usize]
                    .iter()
                    .rev()
                    .take(6)
                    .map(|&w| {
                        let r = &self.writes[e][w as usize];
                        format!("#{} {:?}", r.arrival, r.status)
                    })
                    .collect();
                return Err(format!(
                    "read #{arrival} of export {e} sectors {lba}+{n}: sector {s} holds {}, expected {wanted} (writes of that sector, latest first: {})",
                    describe_sector(got),
                    recent.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// An acknowledged write of an export that promises durability is in what a power cut
    /// would leave: each of its sectors holds its data, or a later write's (which may have run
    /// since), or is unknown because a later write failed or is still unanswered.
    fn check_durable(&mut self, e: usize, w: usize) -> Result<(), String> {
        let durable = &self.worker.storage_mut().durable[e];
        let r = &self.writes[e][w];
        for (i, data) in r.payload.chunks(SECTOR).enumerate() {
            let s = r.lba + i as u64;
            let at = s as usize * SECTOR;
            let got = &durable[at..at + SECTOR];
            if got == data {
                continue;
            }
            let later = self.history[e][s as usize].iter().any(|&l| {
                let o = &self.writes[e][l as usize];
                let k = (s - o.lba) as usize * SECTOR;
                o.arrival > r.arrival
                    && (o.status != WStatus::Ok || o.payload.get(k..k + SECTOR) == Some(got))
            });
            if !later {
                return Err(format!(
                    "the write that arrived #{} to export {e} sectors {}+{} was acknowledged, but after a power cut sector {s} would hold {}, not {}",
                    r.arrival,
                    r.lba,
                    r.payload.len() / SECTOR,
                    describe_sector(got),
                    describe_sector(data)
                ));
            }
        }
        Ok(())
    }

    fn commit(&mut self, idx: usize, v: Verdict) {
        self.pairs[idx].answered = true;
        let key = self.pairs[idx].key;
        if let Some(list) = self.open.get_mut(&key) {
            list.retain(|&i| i != idx);
            if list.is_empty() {
                self.open.remove(&key);
            }
        }
        self.c.answered += 1;
        let (e, arrival) = (self.pairs[idx].export, self.pairs[idx].arrival);
        let Expect::Io(io) = &self.pairs[idx].expect else {
            return;
        };
        self.c.open_io -= 1;
        let span = span_of(&io.decision);
        let (write, jumbo, gathered) = (io.write, io.jumbo, io.gathered);
        let bytes = match io.decision {
            Decision::Read { sectors, .. } | Decision::Write { sectors, .. } => {
                u64::from(sectors) * SECTOR as u64
            }
            _ => 0,
        };
        self.answered_io[e].entry(arrival).or_default().push(span);
        let ok = matches!(v, Verdict::Ok);
        if let Some(w) = write {
            self.writes[e][w].status = if ok { WStatus::Ok } else { WStatus::Failed };
        }
        match v {
            Verdict::Ok => match span.kind {
                Kind::Read => {
                    self.c.ok_reads += 1;
                    self.c.data_sectors += bytes / SECTOR as u64;
                    self.c.read_bytes += bytes;
                    self.c.jumbo_reads += u64::from(jumbo);
                }
                Kind::Write => {
                    self.c.ok_writes += 1;
                    self.c.write_bytes += bytes;
                    self.c.gathered += u64::from(gathered);
                    if let (Some(w), false) = (write, self.sc.exports[e].write_back) {
                        if let Err(why) = self.check_durable(e, w) {
                            fail!(self, "{why}");
                        }
                        self.c.durable_checked += 1;
                    }
                }
                Kind::Fsync => self.c.ok_flushes += 1,
                Kind::Commit => unreachable!("no request decides a group commit"),
            },
            Verdict::Fail(mut found) => {
                self.c.failed += 1;
                found.sort_unstable();
                let credits = &mut self.worker.storage_mut().credits;
                for i in found.into_iter().rev() {
                    let c = credits.remove(i);
                    if c.chunk_op {
                        self.consumed_chunk_credits.push((
                            c.file,
                            c.offset,
                            c.offset + u64::from(c.len),
                            c.step,
                        ));
                    }
                }
            }
            Verdict::Reply => unreachable!(),
        }
    }

    /// No storage operation may own a chunk that is on a ring (the NIC would overwrite it, or
    /// send it before its data arrived).
    pub fn check_memory(&mut self) {
        if self.worker.storage_mut().holding() == 0 {
            return;
        }
        self.mark_stamp += 1;
        let stamp = self.mark_stamp;
        let mut owners = Vec::new();
        self.worker
            .storage_mut()
            .chunks_in_use(&mut self.mark, stamp, &mut owners);
        let net = self.worker.net();
        for (ring, q) in [
            ("fill", &net.fill),
            ("RX", &net.rx),
            ("TX", &net.tx),
            ("completion", &net.comp),
        ] {
            for f in q {
                let c = f.addr() as usize / CHUNK;
                if self.mark[c] == stamp {
                    let ud = owners.iter().find(|o| o.0 == c).map(|o| o.1);
                    fail!(
                        self,
                        "UMEM chunk {c} is on the {ring} ring while storage operation {ud:#x?} still owns it"
                    );
                }
            }
        }
    }

    /// Whether everything is answered that will be, and every queue is empty.
    fn drained(&mut self) -> bool {
        let net = self.worker.net();
        let rings = net.rx.is_empty() && net.tx.is_empty() && net.comp.is_empty();
        rings
            && self.delivered.is_empty()
            && self.worker.quiet()
            && self.worker.storage_mut().idle()
    }

    /// Stop sending, let the disk finish everything, the NIC send everything, the worker
    /// answer everything; then check the books.
    pub fn drain(&mut self) {
        let mut rounds = 0;
        while !self.drained() {
            rounds += 1;
            if rounds > 5000 {
                let net = self.worker.net();
                let (rx, tx, comp) = (net.rx.len(), net.tx.len(), net.comp.len());
                let quiet = self.worker.quiet();
                let in_flight = self.worker.in_flight();
                let holding = self.worker.storage_mut().holding();
                fail!(
                    self,
                    "the worker does not drain: RX ring {rx}, TX ring {tx}, completion ring {comp}, {} packets undelivered, quiet {quiet}, in flight {in_flight}, disk holds {holding}",
                    self.delivered.len()
                );
            }
            self.step += 1;
            WHERE.with(|w| w.set((self.seed, self.step)));
            self.worker.storage_mut().expedite();
            self.turns(8, true);
            self.worker.storage_mut().tick(self.step);
            self.transmit(usize::MAX);
            self.check_memory();
        }
        self.c.quiesces += 1;
        self.check_books();
    }

    /// After a drain: every request answered or counted, every counter as the model says.
    fn check_books(&mut self) {
        self.match_group_failures();
        let st = self.worker.stats().clone();
        let unanswered = self.c.pairs - self.c.answered;
        if unanswered + self.c.lost_drops != st.no_slot + st.no_frame {
            let some: Vec<String> = self
                .pairs
                .iter()
                .filter(|p| !p.answered)
                .rev()
                .take(5)
                .map(|p| {
                    format!(
                        "#{} e{}.{} tag {:#x} {}",
                        p.arrival,
                        p.key.1,
                        p.key.2,
                        p.key.3,
                        match &p.expect {
                            Expect::Reply(b) => format!("reply cmd {}", b[19]),
                            Expect::Io(io) => format!("{:?}", io.decision),
                        }
                    )
                })
                .collect();
            fail!(
                self,
                "after draining, {unanswered} requests are unanswered (+{} wildcard drops never decided), but no_slot {} + no_frame {} = {}; latest unanswered: {}",
                self.c.lost_drops,
                st.no_slot,
                st.no_frame,
                st.no_slot + st.no_frame,
                some.join(", ")
            );
        }
        let disk = self.worker.storage_mut();
        if !disk.credits.is_empty() {
            let c = disk.credits[0].clone();
            let n = disk.credits.len();
            fail!(
                self,
                "{n} injected disk failures were never reported, e.g. {c:?}"
            );
        }
        // Drained: every write that could fail with them has been answered. (That the writes a
        // failed commit covered were not acknowledged is `check_durable`'s to see: the commit
        // lost them.)
        disk.commit_credits.clear();
        let (soft, exhausted) = (disk.n.soft, disk.n.exhausted);
        let checks = [
            ("retries", st.retries, soft - exhausted),
            ("reads", st.reads, self.c.ok_reads),
            ("writes", st.writes, self.c.ok_writes),
            ("flushes", st.flushes, self.c.ok_flushes),
            ("io_errors", st.io_errors, self.c.failed),
            ("read_bytes", st.read_bytes, self.c.read_bytes),
            ("write_bytes", st.write_bytes, self.c.write_bytes),
            ("multi_desc_reads", st.multi_desc_reads, self.c.jumbo_reads),
            ("gathered_writes", st.gathered_writes, self.c.gathered),
            ("tx_frames", st.tx_frames, self.c.tx_descs),
            ("rx_frames", st.rx_frames, self.c.descs),
            (
                "dropped",
                st.dropped,
                self.c.oracle_drops - self.c.lost_drops,
            ),
        ];
        for (name, got, want) in checks {
            if got != want {
                fail!(self, "stats.{name} is {got}, the simulation counted {want}");
            }
        }
        if self.worker.in_flight() != 0 {
            fail!(
                self,
                "drained, yet in_flight() = {}",
                self.worker.in_flight()
            );
        }
        // With nothing in flight the worker has room for a whole batch: no in-flight slot
        // and no bounce slot leaked.
        self.worker.net_mut().recv_max = None;
        self.turns(1, true);
        let room = self.worker.net().recv_max;
        let want = self.sc.capacity.min(RX_BATCH);
        if room != Some(want) {
            fail!(
                self,
                "drained, the worker takes {room:?} descriptors per loop; with {} slots it should take {want} (a slot leaked)",
                self.sc.capacity
            );
        }
    }

    /// Every UMEM frame is accounted for: on a ring, free, or among the worker's spares (which
    /// the fill ring then takes).
    pub fn check_frames(&mut self) {
        let mut stash = Vec::new();
        loop {
            let net = self.worker.net_mut();
            stash.extend(net.fill.drain(..));
            if let Err(e) = self.worker.turn(false) {
                fail!(self, "turn failed: {e}");
            }
            let net = self.worker.net();
            if net.fill.len() < net.fill_cap {
                break;
            }
        }
        let net = self.worker.net_mut();
        let total = net.umem.free_count()
            + stash.len()
            + net.fill.len()
            + net.rx.len()
            + net.tx.len()
            + net.comp.len();
        for f in stash {
            net.umem.free(f);
        }
        if total != self.frame_count {
            fail!(
                self,
                "{total} of {} UMEM frames accounted for after draining: {} leaked",
                self.frame_count,
                self.frame_count as i64 - total as i64
            );
        }
    }
}

pub enum Verdict {
    Reply,
    Ok,
    /// Credits (indices into the disk's list) the failure consumes.
    Fail(Vec<usize>),
}
