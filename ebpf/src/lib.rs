//! The XDP steering program and its loader: all of the project's aya usage lives here.
//!
//! `aoe_steer.bpf.c` (next to this crate's `Cargo.toml`) sends AoE frames (EtherType 0x88A2)
//! with the wanted R (response) flag to the AF_XDP socket registered for the receiving queue,
//! drops AoE frames with the other R value, and passes everything else to the kernel stack.
//! In the target role it also drops, before they reach a socket, requests from a group
//! (multicast/broadcast) or all-zero source MAC and requests to a destination other than the
//! interface's MAC or broadcast ([`Counters::bad_address`]), and, once [`Steering::set_acl`]
//! gave it a list, requests from source MACs not on that list ([`Counters::denied`]).
//! Its compiled object `aoe_steer.o` is committed and embedded, so building needs no clang;
//! `cargo xtask ebpf` rebuilds it and `cargo xtask ebpf --check` verifies it.
//!
//! ```no_run
//! use xblade_ebpf::{Role, Steering, XdpMode};
//! # fn xsk_fd() -> std::os::fd::RawFd { 3 }
//! let mut steering = Steering::attach("eth0", XdpMode::Auto, Role::Target, false)?;
//! println!("XDP attached to eth0 in {} mode", steering.mode());
//! steering.register(0, xsk_fd())?; // an AF_XDP socket bound to eth0 queue 0
//! // Only these initiators reach the socket (the union of the exports' lists on eth0).
//! steering.set_acl(Some(&[[0x52, 0x54, 0, 0x12, 0x34, 0x56]]))?;
//! println!("{:?}", steering.counters()?);
//! drop(steering); // detaches the program
//! # Ok::<(), xblade_ebpf::SteerError>(())
//! ```
//!
//! Every operation acts in the network namespace of the calling thread.
//!
//! # Attaching next to other XDP programs
//!
//! An interface has at most one XDP program per mode, and the kernel refuses driver and skb
//! programs at the same time. aya 0.14's `Xdp::attach` always tries `BPF_LINK_CREATE` first and
//! only falls back to netlink on `EINVAL` (kernels before 5.9); when a program is already there
//! the kernel answers `EBUSY` (same mode, or a bpf_link) or `EEXIST` (the other mode), and aya
//! returns that as an opaque "`bpf_link_create` failed" — it never replaces anything (its netlink
//! path also sets `XDP_FLAGS_UPDATE_IF_NOEXIST`). So [`Steering::attach`] asks rtnetlink first
//! and refuses with [`SteerError::AlreadyAttached`], or with `replace` removes the old program
//! itself: over netlink, or with `BPF_LINK_DETACH` when a bpf_link holds it.
//!
//! The link is created here rather than by aya so that drop can `BPF_LINK_DETACH` it: a link
//! that is merely closed stays attached while any copy of its fd lives, e.g. in a child being
//! spawned at that moment.

mod netlink;
mod sys;

use std::{
    collections::BTreeSet,
    fmt, io,
    os::fd::{AsFd as _, OwnedFd, RawFd},
    str::FromStr,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, XskMap},
    programs::{links::LinkType, xdp::XdpLink, Xdp},
    Ebpf, EbpfLoader,
};

/// The embedded program object, built by `cargo xtask ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../aoe_steer.o");

/// Name of the XDP function in `aoe_steer.bpf.c`.
const PROGRAM: &str = "aoe_steer";
/// Map names and layouts in `aoe_steer.bpf.c`.
const MAP_XSKS: &str = "xsks";
const MAP_CONFIG: &str = "config";
const MAP_COUNTERS: &str = "counters";
const MAP_ACL: &str = "acl";
const COUNTER_REDIRECTED: u32 = 0;
const COUNTER_DROPPED: u32 = 1;
const COUNTER_PASSED: u32 = 2;
const COUNTER_DENIED: u32 = 3;
const COUNTER_BAD_ADDRESS: u32 = 4;
/// `config.flags` bits.
const F_CHECK_SOURCE: u32 = 0x1;
const F_CHECK_DEST: u32 = 0x2;
const F_ACL: u32 = 0x4;
/// The value stored for every key of the `acl` map (the program only tests presence).
const ACL_PRESENT: u32 = 1;

/// A MAC address, as it appears on the wire.
pub type Mac = [u8; 6];

/// Entries of the `acl` map (`ACL_MAX` in the program): the most source MACs
/// [`Steering::set_acl`] takes.
pub const ACL_CAPACITY: usize = 1024;

/// Slots in the XSKMAP: queue ids `0..XSK_SLOTS` can get a socket (`max_entries` of `xsks`).
pub const XSK_SLOTS: u32 = 64;

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Driver mode if the NIC supports it, otherwise skb mode. [`Steering::mode`] tells which.
    #[default]
    Auto,
    /// Native XDP, run by the NIC driver: the fast path, required for AF_XDP zero-copy.
    Driver,
    /// Generic XDP, run by the kernel stack after skb allocation: works on any interface.
    Skb,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Driver => "driver",
            Self::Skb => "skb",
        })
    }
}

impl FromStr for XdpMode {
    type Err = String;

    /// Parses `auto`, `driver` (alias `drv`, `native`) and `skb` (alias `generic`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "driver" | "drv" | "native" => Ok(Self::Driver),
            "skb" | "generic" => Ok(Self::Skb),
            _ => Err(format!(
                "unknown XDP mode `{s}`: expected auto, driver or skb"
            )),
        }
    }
}

/// Which AoE frames this host wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An AoE target takes requests (R = 0); responses (our own, reflected back) are dropped.
    Target,
    /// An initiator or load generator takes responses (R = 1); requests are dropped.
    Initiator,
}

impl Role {
    /// The program's `want_response` config value.
    const fn want_response(self) -> u32 {
        match self {
            Self::Target => 0,
            Self::Initiator => 1,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Target => "target",
            Self::Initiator => "initiator",
        })
    }
}

/// The program's frame counters, summed over all CPUs since it was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Wanted AoE frames handed to a registered AF_XDP socket.
    pub redirected: u64,
    /// AoE frames with the unwanted R flag, and truncated AoE frames.
    pub dropped: u64,
    /// Non-AoE frames, and wanted AoE frames on a queue with no socket registered.
    pub passed: u64,
    /// Wanted AoE frames from a source MAC that the ACL ([`Steering::set_acl`]) does not list.
    pub denied: u64,
    /// Wanted AoE frames from a group (multicast/broadcast) or all-zero source MAC, or to a
    /// destination other than the interface's MAC and broadcast (target role).
    pub bad_address: u64,
}

/// Entry 0 of the program's `config` map (`struct steer_config`, 16 bytes, host endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SteerConfig {
    want_response: u32,
    flags: u32,
    local_mac: Mac,
}

impl SteerConfig {
    /// What `attach` starts with: the role's R flag and, in the target role, address hygiene
    /// against the interface's MAC (the destination check only when it has one). No ACL.
    fn new(role: Role, local_mac: Option<Mac>) -> Self {
        let mut config = Self {
            want_response: role.want_response(),
            flags: 0,
            local_mac: [0; 6],
        };
        if role == Role::Target {
            config.flags |= F_CHECK_SOURCE;
            config.set_local_mac(local_mac);
        }
        config
    }

    fn set_local_mac(&mut self, mac: Option<Mac>) {
        match mac.filter(|m| *m != [0; 6]) {
            Some(mac) => {
                self.local_mac = mac;
                self.flags |= F_CHECK_DEST;
            }
            None => {
                self.local_mac = [0; 6];
                self.flags &= !F_CHECK_DEST;
            }
        }
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.want_response.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..14].copy_from_slice(&self.local_mac);
        b
    }
}

/// The XDP programs attached to one interface, per mode, as rtnetlink reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttachment {
    /// Program id in driver (native) mode.
    pub driver_prog_id: Option<u32>,
    /// Program id in skb (generic) mode.
    pub skb_prog_id: Option<u32>,
    /// Program id in hardware-offload mode.
    pub hw_prog_id: Option<u32>,
}

impl XdpAttachment {
    fn from_state(state: &netlink::LinkState) -> Option<Self> {
        let id = |id: u32| (id != 0).then_some(id);
        let attachment = Self {
            driver_prog_id: id(state.drv_prog_id),
            skb_prog_id: id(state.skb_prog_id),
            hw_prog_id: id(state.hw_prog_id),
        };
        (attachment.modes().next().is_some()).then_some(attachment)
    }

    /// `(XDP_FLAGS_*_MODE, name, program id)` for each mode with a program.
    fn modes(&self) -> impl Iterator<Item = (u32, &'static str, u32)> {
        [
            (netlink::XDP_FLAGS_DRV_MODE, "driver", self.driver_prog_id),
            (netlink::XDP_FLAGS_SKB_MODE, "skb", self.skb_prog_id),
            (netlink::XDP_FLAGS_HW_MODE, "hardware", self.hw_prog_id),
        ]
        .into_iter()
        .filter_map(|(flag, name, id)| Some((flag, name, id?)))
    }
}

impl fmt::Display for XdpAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (_, mode, id)) in self.modes().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}program id {id} in {mode} mode")?;
        }
        Ok(())
    }
}

/// Reports which XDP programs are attached to `ifname`; `None` when there are none.
pub fn xdp_attachment(ifname: &str) -> Result<Option<XdpAttachment>, SteerError> {
    let state = query_interface(ifname)?;
    Ok(XdpAttachment::from_state(&state))
}

/// Why steering could not be set up or used. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SteerError {
    #[error("`{name}` is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    InvalidInterfaceName { name: String },

    #[error("there is no network interface `{ifname}` in this network namespace (see `ip link`)")]
    NoSuchInterface { ifname: String },

    #[error(
        "{action}: permission denied ({cause}); loading BPF needs root or \
         CAP_BPF+CAP_NET_ADMIN (CAP_SYS_ADMIN before Linux 5.8)"
    )]
    NeedPrivileges { action: String, cause: io::Error },

    #[error(
        "{action}: out of memory for BPF ({cause}); BPF memory is charged to the service's \
         memory cgroup (to RLIMIT_MEMLOCK before Linux 5.11): raise MemoryMax=/LimitMEMLOCK= \
         (systemd) or `ulimit -l`, or run as root"
    )]
    MemoryLimit { action: String, cause: io::Error },

    #[error(
        "{ifname} already has an XDP program attached ({existing}); stop whatever attached it \
         (see `ip -d link show dev {ifname}`), or pass --replace-xdp to replace it"
    )]
    AlreadyAttached { ifname: String, existing: String },

    #[error("could not remove the XDP program already on {ifname} ({existing}): {cause}")]
    ReplaceFailed {
        ifname: String,
        existing: String,
        cause: io::Error,
    },

    #[error(
        "the driver of {ifname} does not support native (driver-mode) XDP; use --xdp-mode skb"
    )]
    DriverModeUnsupported { ifname: String },

    #[error(
        "the MTU of {ifname} ({mtu}) is too large for XDP in {mode} mode on this driver; \
         lower it (`ip link set dev {ifname} mtu 1500`) or use --xdp-mode skb"
    )]
    MtuTooLarge {
        ifname: String,
        mtu: u32,
        mode: XdpMode,
    },

    #[error("attaching XDP to {ifname} in {mode} mode failed: {cause}")]
    AttachFailed {
        ifname: String,
        mode: XdpMode,
        cause: io::Error,
    },

    #[error(
        "could not attach XDP to {ifname}: driver mode failed ({driver}), and so did the skb-mode \
         fallback ({skb})"
    )]
    AutoFailed {
        ifname: String,
        driver: Box<SteerError>,
        skb: Box<SteerError>,
    },

    #[error(
        "the kernel rejected the XDP program ({cause}); xblade needs Linux 5.18 or newer \
         (multi-buffer XDP). Verifier log:\n{log}"
    )]
    ProgramRejected { cause: io::Error, log: String },

    #[error(
        "the embedded XDP object ebpf/aoe_steer.o is unusable ({detail}); rebuild it with \
         `cargo xtask ebpf`"
    )]
    BadObject { detail: String },

    #[error(
        "queue id {queue_id} has no XSKMAP slot: the program steers queues 0 to {} only; \
         reduce the number of queues (`ethtool -L`)",
        XSK_SLOTS - 1
    )]
    QueueOutOfRange { queue_id: u32 },

    #[error("fd {fd} given for queue {queue_id} is not an AF_XDP socket ({cause})")]
    NotXskSocket {
        fd: RawFd,
        queue_id: u32,
        cause: io::Error,
    },

    #[error("{action} failed: {cause}")]
    Map { action: String, cause: String },

    #[error("querying interface {ifname} over rtnetlink failed: {cause}")]
    Netlink { ifname: String, cause: io::Error },

    #[error(
        "the XDP source ACL of {ifname} would hold {macs} MACs; it holds at most {}: \
         list fewer initiators on the exports served there",
        ACL_CAPACITY
    )]
    AclTooLarge { ifname: String, macs: usize },
}

/// The XDP program, loaded and attached to one interface. Dropping it detaches the program.
pub struct Steering {
    /// Always `Some` until drop.
    attachment: Option<Attachment>,
    xsks: XskMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    config_map: Array<MapData, [u8; 16]>,
    acl_map: HashMap<MapData, Mac, u32>,
    /// What `config_map` holds.
    config: SteerConfig,
    /// The keys of `acl_map` (the kernel's copy is authoritative; this one follows every
    /// successful update).
    acl: BTreeSet<Mac>,
    ebpf: Ebpf,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    role: Role,
    replaced: Option<XdpAttachment>,
    driver_error: Option<SteerError>,
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering")
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Loads the program for `role` and attaches it to `ifname` in `mode`.
    ///
    /// If an XDP program is already attached to the interface (in any mode), this fails with
    /// [`SteerError::AlreadyAttached`] unless `replace` is true; then that program is detached
    /// first, whether it was attached over netlink or held by another process's bpf_link. The
    /// replacement is not atomic: frames arriving in between reach the kernel stack.
    pub fn attach(
        ifname: &str,
        mode: XdpMode,
        role: Role,
        replace: bool,
    ) -> Result<Self, SteerError> {
        let state = query_interface(ifname)?;
        let existing = XdpAttachment::from_state(&state);
        if let (Some(existing), false) = (existing, replace) {
            return Err(SteerError::AlreadyAttached {
                ifname: ifname.to_owned(),
                existing: existing.to_string(),
            });
        }

        let config = SteerConfig::new(role, state.mac);
        let mut ebpf = load(ifname, config)?;
        if let Some(existing) = existing {
            detach_existing(ifname, state.ifindex, &existing)?;
        }

        let xsks = take_map(&mut ebpf, MAP_XSKS, XskMap::try_from)?;
        let counters = take_map(&mut ebpf, MAP_COUNTERS, PerCpuArray::try_from)?;
        let config_map = take_map(&mut ebpf, MAP_CONFIG, Array::try_from)?;
        let acl_map = take_map(&mut ebpf, MAP_ACL, HashMap::try_from)?;
        let program = xdp_program(&mut ebpf)?;
        let (attachment, mode, driver_error) = match mode {
            XdpMode::Driver | XdpMode::Skb => {
                (attach_in(program, ifname, &state, mode)?, mode, None)
            }
            XdpMode::Auto => match attach_in(program, ifname, &state, XdpMode::Driver) {
                Ok(attachment) => (attachment, XdpMode::Driver, None),
                Err(
                    e @ (SteerError::AlreadyAttached { .. } | SteerError::NeedPrivileges { .. }),
                ) => return Err(e),
                Err(driver) => match attach_in(program, ifname, &state, XdpMode::Skb) {
                    Ok(attachment) => (attachment, XdpMode::Skb, Some(driver)),
                    Err(skb) => {
                        return Err(SteerError::AutoFailed {
                            ifname: ifname.to_owned(),
                            driver: Box::new(driver),
                            skb: Box::new(skb),
                        })
                    }
                },
            },
        };

        Ok(Self {
            attachment: Some(attachment),
            xsks,
            counters,
            config_map,
            acl_map,
            config,
            acl: BTreeSet::new(),
            ebpf,
            ifname: ifname.to_owned(),
            ifindex: state.ifindex,
            mode,
            role,
            replaced: existing,
            driver_error,
        })
    }

    /// The mode actually used: [`XdpMode::Driver`] or [`XdpMode::Skb`], never `Auto`.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The role given to [`Steering::attach`].
    pub fn role(&self) -> Role {
        self.role
    }

    /// The interface the program is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index, in the namespace `attach` ran in.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Why driver mode was not used, when [`XdpMode::Auto`] fell back to skb mode (worth
    /// logging: skb mode is much slower and rules out AF_XDP zero-copy).
    pub fn auto_fallback_reason(&self) -> Option<&SteerError> {
        self.driver_error.as_ref()
    }

    /// The programs that `attach` detached because `replace` was true.
    pub fn replaced(&self) -> Option<XdpAttachment> {
        self.replaced
    }

    /// The kernel's id for the loaded program (as in `ip link`, `bpftool prog`).
    pub fn program_id(&self) -> Result<u32, SteerError> {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| SteerError::BadObject {
                detail: format!("no XDP program `{PROGRAM}`"),
            })?;
        program
            .info()
            .map(|info| info.id())
            .map_err(|e| SteerError::Map {
                action: "reading the XDP program's id".to_owned(),
                cause: chain(&e),
            })
    }

    /// Sends the wanted AoE frames received on `queue_id` to the AF_XDP socket `xsk_fd`, which
    /// must be bound to that queue of this interface. Replaces any earlier socket for the queue.
    pub fn register(&mut self, queue_id: u32, xsk_fd: RawFd) -> Result<(), SteerError> {
        if queue_id >= XSK_SLOTS {
            return Err(SteerError::QueueOutOfRange { queue_id });
        }
        self.xsks
            .set(queue_id, xsk_fd, 0)
            .map_err(|e| match errno(&e) {
                Some(libc::EOPNOTSUPP | libc::ENOTSOCK | libc::EBADF) => SteerError::NotXskSocket {
                    fd: xsk_fd,
                    queue_id,
                    cause: io_error(&e),
                },
                _ => SteerError::Map {
                    action: format!("registering the AF_XDP socket of queue {queue_id}"),
                    cause: chain(&e),
                },
            })
    }

    /// Stops steering frames of `queue_id` to a socket: they go to the kernel stack again.
    /// Unregistering a queue that has no socket is not an error.
    pub fn unregister(&mut self, queue_id: u32) -> Result<(), SteerError> {
        if queue_id >= XSK_SLOTS {
            return Err(SteerError::QueueOutOfRange { queue_id });
        }
        match self.xsks.unset(queue_id) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(SteerError::Map {
                action: format!("unregistering the AF_XDP socket of queue {queue_id}"),
                cause: chain(&e),
            }),
        }
    }

    /// The counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, SteerError> {
        let read = |index: u32| -> Result<u64, SteerError> {
            let values = self.counters.get(&index, 0).map_err(|e| SteerError::Map {
                action: "reading the XDP counters".to_owned(),
                cause: chain(&e),
            })?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(Counters {
            redirected: read(COUNTER_REDIRECTED)?,
            dropped: read(COUNTER_DROPPED)?,
            passed: read(COUNTER_PASSED)?,
            denied: read(COUNTER_DENIED)?,
            bad_address: read(COUNTER_BAD_ADDRESS)?,
        })
    }

    /// The MAC the destination check compares with: the interface's, read by `attach` in the
    /// target role (`None` in the initiator role, or for an interface without a MAC, such as
    /// `lo`: then only the source is checked).
    pub fn local_mac(&self) -> Option<Mac> {
        (self.config.flags & F_CHECK_DEST != 0).then_some(self.config.local_mac)
    }

    /// Changes the MAC of the destination check (after the interface's address changed), or
    /// turns the check off (`None`). Takes effect for the next frame; XDP stays attached.
    pub fn set_local_mac(&mut self, mac: Option<Mac>) -> Result<(), SteerError> {
        let mut config = self.config;
        config.set_local_mac(mac);
        self.write_config(config)
    }

    /// Replaces the source ACL without detaching the program.
    ///
    /// `None`: every source passes (some export on this interface serves anyone; the
    /// worker decides per export). `Some(list)`: only requests from the MACs in `list` reach
    /// the AF_XDP sockets; the others are dropped and counted in [`Counters::denied`]
    /// (`Some(&[])` drops every request). Duplicates are ignored; at most [`ACL_CAPACITY`]
    /// distinct MACs.
    ///
    /// The update is not one atomic step, but it never lets through, even for a moment, a
    /// source that neither the old nor the new setting allows: MACs leaving the list are
    /// removed before MACs joining it are added, an ACL is filled before it is switched on,
    /// and switched off before it is emptied.
    pub fn set_acl(&mut self, list: Option<&[Mac]>) -> Result<(), SteerError> {
        let Some(list) = list else {
            let mut config = self.config;
            config.flags &= !F_ACL;
            self.write_config(config)?;
            return self.replace_acl_keys(&BTreeSet::new());
        };
        let wanted: BTreeSet<Mac> = list.iter().copied().collect();
        if wanted.len() > ACL_CAPACITY {
            return Err(SteerError::AclTooLarge {
                ifname: self.ifname.clone(),
                macs: wanted.len(),
            });
        }
        self.replace_acl_keys(&wanted)?;
        let mut config = self.config;
        config.flags |= F_ACL;
        self.write_config(config)
    }

    /// The source ACL as the kernel's map holds it, sorted: `None` when it is off (every
    /// source passes).
    pub fn acl(&self) -> Result<Option<Vec<Mac>>, SteerError> {
        let config = self.read_config()?;
        if config.flags & F_ACL == 0 {
            return Ok(None);
        }
        let mut macs = self
            .acl_map
            .keys()
            .collect::<Result<Vec<Mac>, _>>()
            .map_err(|e| SteerError::Map {
                action: "reading the XDP source ACL".to_owned(),
                cause: chain(&e),
            })?;
        macs.sort_unstable();
        Ok(Some(macs))
    }

    /// Makes the `acl` map's keys `wanted`: removals first, then additions.
    fn replace_acl_keys(&mut self, wanted: &BTreeSet<Mac>) -> Result<(), SteerError> {
        let leaving: Vec<Mac> = self.acl.difference(wanted).copied().collect();
        for mac in leaving {
            match self.acl_map.remove(&mac) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(SteerError::Map {
                        action: format!("removing {} from the XDP source ACL", MacDisplay(mac)),
                        cause: chain(&e),
                    })
                }
            }
            self.acl.remove(&mac);
        }
        let joining: Vec<Mac> = wanted.difference(&self.acl).copied().collect();
        for mac in joining {
            self.acl_map
                .insert(mac, ACL_PRESENT, 0)
                .map_err(|e| SteerError::Map {
                    action: format!("adding {} to the XDP source ACL", MacDisplay(mac)),
                    cause: chain(&e),
                })?;
            self.acl.insert(mac);
        }
        Ok(())
    }

    fn write_config(&mut self, config: SteerConfig) -> Result<(), SteerError> {
        if config == self.config {
            return Ok(());
        }
        self.config_map
            .set(0, config.to_bytes(), 0)
            .map_err(|e| SteerError::Map {
                action: "writing the XDP program's config".to_owned(),
                cause: chain(&e),
            })?;
        self.config = config;
        Ok(())
    }

    fn read_config(&self) -> Result<SteerConfig, SteerError> {
        let b = self.config_map.get(&0, 0).map_err(|e| SteerError::Map {
            action: "reading the XDP program's config".to_owned(),
            cause: chain(&e),
        })?;
        let word = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut local_mac = [0; 6];
        local_mac.copy_from_slice(&b[8..14]);
        Ok(SteerConfig {
            want_response: word(0),
            flags: word(4),
            local_mac,
        })
    }
}

/// `aa:bb:cc:dd:ee:ff`.
struct MacDisplay(Mac);

impl fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Drop for Steering {
    /// Detaches the program before the maps and the program itself are released.
    fn drop(&mut self) {
        match self.attachment.take() {
            Some(Attachment::Link(link)) => {
                // Fails only if someone else detached it already (e.g. a replacing attach);
                // either way it is off the interface. Closing the fd then frees the link.
                let _ = sys::link_detach(link.as_fd());
            }
            Some(Attachment::Netlink(link)) => drop(link),
            None => {}
        }
    }
}

fn validate_ifname(name: &str) -> Result<(), SteerError> {
    let valid = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(SteerError::InvalidInterfaceName {
            name: name.to_owned(),
        })
    }
}

fn query_interface(ifname: &str) -> Result<netlink::LinkState, SteerError> {
    validate_ifname(ifname)?;
    netlink::link_state(ifname).map_err(|cause| match cause.raw_os_error() {
        Some(libc::ENODEV) => SteerError::NoSuchInterface {
            ifname: ifname.to_owned(),
        },
        _ => SteerError::Netlink {
            ifname: ifname.to_owned(),
            cause,
        },
    })
}

/// Parses the object, creates the maps, writes the config and loads the program (no attach).
fn load(ifname: &str, config: SteerConfig) -> Result<Ebpf, SteerError> {
    let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| {
        let action = format!("loading the XDP program for {ifname}");
        classify(&e, action).unwrap_or_else(|| SteerError::BadObject { detail: chain(&e) })
    })?;

    let mut config_map: Array<&mut MapData, [u8; 16]> = ebpf
        .map_mut(MAP_CONFIG)
        .ok_or_else(|| missing_map(MAP_CONFIG))
        .and_then(|map| {
            Array::try_from(map).map_err(|e| SteerError::BadObject { detail: chain(&e) })
        })?;
    config_map
        .set(0, config.to_bytes(), 0)
        .map_err(|e| SteerError::Map {
            action: "writing the XDP program's config".to_owned(),
            cause: chain(&e),
        })?;

    let program = xdp_program(&mut ebpf)?;
    program.load().map_err(|e| {
        let action = format!("loading the XDP program for {ifname}");
        if let Some(known) = classify(&e, action) {
            return known;
        }
        match e {
            aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            } => SteerError::ProgramRejected {
                cause: io_error,
                log: verifier_log.to_string(),
            },
            other => SteerError::BadObject {
                detail: chain(&other),
            },
        }
    })?;
    Ok(ebpf)
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, SteerError> {
    ebpf.program_mut(PROGRAM)
        .ok_or_else(|| SteerError::BadObject {
            detail: format!("it has no program `{PROGRAM}`"),
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| SteerError::BadObject { detail: chain(&e) })
}

fn missing_map(name: &str) -> SteerError {
    SteerError::BadObject {
        detail: format!("it has no map `{name}`"),
    }
}

fn take_map<M, E: std::error::Error + 'static>(
    ebpf: &mut Ebpf,
    name: &str,
    convert: impl FnOnce(aya::maps::Map) -> Result<M, E>,
) -> Result<M, SteerError> {
    let map = ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
    convert(map).map_err(|e| SteerError::BadObject { detail: chain(&e) })
}

/// How the program is attached, and so how it gets detached.
enum Attachment {
    /// A bpf_link we created: detached with `BPF_LINK_DETACH` on drop, then closed. Detaching
    /// explicitly makes drop synchronous even while a spawned child briefly holds a copy of
    /// the fd (between its fork and exec), which would keep a merely closed link attached.
    Link(OwnedFd),
    /// aya's netlink attachment, used on kernels without XDP links (before 5.9): aya removes
    /// it on drop, if it is still our program.
    Netlink(XdpLink),
}

/// Attaches in `mode` (Driver or Skb).
fn attach_in(
    program: &mut Xdp,
    ifname: &str,
    state: &netlink::LinkState,
    mode: XdpMode,
) -> Result<Attachment, SteerError> {
    let (flag, aya_mode) = match mode {
        XdpMode::Driver => (netlink::XDP_FLAGS_DRV_MODE, aya::programs::XdpMode::Driver),
        XdpMode::Skb => (netlink::XDP_FLAGS_SKB_MODE, aya::programs::XdpMode::Skb),
        XdpMode::Auto => unreachable!("Auto is resolved by the caller"),
    };
    let created = {
        let prog_fd = program
            .fd()
            .map_err(|e| SteerError::BadObject { detail: chain(&e) })?;
        sys::xdp_link_create(prog_fd.as_fd(), state.ifindex, flag)
    };
    match created {
        Ok(link) => Ok(Attachment::Link(link)),
        // No XDP bpf_link in this kernel: aya's attach tries a link, then falls back to netlink.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => program
            .attach_to_if_index(state.ifindex, aya_mode)
            .and_then(|id| program.take_link(id))
            .map(Attachment::Netlink)
            .map_err(|e| attach_error(&e, ifname, state, mode)),
        Err(e) => Err(attach_error(&e, ifname, state, mode)),
    }
}

fn attach_error(
    error: &(dyn std::error::Error + 'static),
    ifname: &str,
    state: &netlink::LinkState,
    mode: XdpMode,
) -> SteerError {
    let action = format!("attaching XDP to {ifname} in {mode} mode");
    if let Some(known) = classify(error, action) {
        return known;
    }
    let ifname = ifname.to_owned();
    match errno(error) {
        // EBUSY: a program in this mode; EEXIST: one in the other mode. We checked before
        // loading, so another attach raced with ours.
        Some(libc::EBUSY | libc::EEXIST) => SteerError::AlreadyAttached {
            existing: xdp_attachment(&ifname)
                .ok()
                .flatten()
                .map_or_else(|| "unknown program".to_owned(), |a| a.to_string()),
            ifname,
        },
        Some(libc::EOPNOTSUPP) if mode == XdpMode::Driver => {
            SteerError::DriverModeUnsupported { ifname }
        }
        Some(libc::ERANGE) => SteerError::MtuTooLarge {
            ifname,
            mtu: state.mtu,
            mode,
        },
        Some(libc::ENODEV) => SteerError::NoSuchInterface { ifname },
        _ => SteerError::AttachFailed {
            ifname,
            mode,
            cause: io_error(error),
        },
    }
}

/// Removes every XDP program in `existing` from the interface: netlink-attached ones over
/// netlink, bpf_link-held ones (netlink answers `EBUSY`) with `BPF_LINK_DETACH`.
fn detach_existing(ifname: &str, ifindex: u32, existing: &XdpAttachment) -> Result<(), SteerError> {
    let failed = |cause: io::Error| SteerError::ReplaceFailed {
        ifname: ifname.to_owned(),
        existing: existing.to_string(),
        cause,
    };
    for (flag, _, prog_id) in existing.modes() {
        match netlink::detach_xdp(ifindex, flag) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                detach_link(ifindex, prog_id).map_err(failed)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Err(SteerError::NeedPrivileges {
                    action: format!("removing the XDP program already on {ifname}"),
                    cause: e,
                })
            }
            Err(e) => return Err(failed(e)),
        }
    }
    match xdp_attachment(ifname)? {
        None => Ok(()),
        Some(still) => Err(failed(io::Error::other(format!(
            "{still} is still attached after detaching"
        )))),
    }
}

/// Finds the XDP bpf_link that holds `prog_id` on `ifindex` and detaches it.
fn detach_link(ifindex: u32, prog_id: u32) -> io::Result<()> {
    for info in aya::programs::loaded_links() {
        let info = info.map_err(|e| io::Error::other(chain(&e)))?;
        if info.program_id() != prog_id || !matches!(info.link_type(), Ok(LinkType::Xdp)) {
            continue;
        }
        let link = match sys::link_fd_by_id(info.id()) {
            Ok(link) => link,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // went away meanwhile
            Err(e) => return Err(e),
        };
        let (_, link_ifindex) = sys::xdp_link_target(link.as_fd())?;
        if link_ifindex == ifindex {
            return sys::link_detach(link.as_fd());
        }
    }
    Err(io::Error::other(format!(
        "program id {prog_id} is held by a bpf_link that could not be found"
    )))
}

/// Maps the errors every BPF step can hit (privileges, memory) to their variants.
fn classify(error: &(dyn std::error::Error + 'static), action: String) -> Option<SteerError> {
    match errno(error)? {
        libc::EPERM | libc::EACCES if is_privilege_error(error) => {
            Some(SteerError::NeedPrivileges {
                action,
                cause: io_error(error),
            })
        }
        libc::ENOMEM | libc::ENOBUFS => Some(SteerError::MemoryLimit {
            action,
            cause: io_error(error),
        }),
        _ => None,
    }
}

/// `EACCES` from BPF_PROG_LOAD is the verifier rejecting the program, not missing privileges;
/// everywhere else EPERM/EACCES mean privileges.
fn is_privilege_error(error: &(dyn std::error::Error + 'static)) -> bool {
    match error.downcast_ref::<aya::programs::ProgramError>() {
        Some(aya::programs::ProgramError::LoadError { io_error, .. }) => {
            io_error.raw_os_error() == Some(libc::EPERM)
        }
        _ => true,
    }
}

/// The first OS error code in the error's source chain.
fn errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        if let Some(code) = e
            .downcast_ref::<aya::programs::XdpError>()
            .and_then(|aya::programs::XdpError::NetlinkError(n)| n.raw_os_error())
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// The OS error in the chain as an owned `io::Error` (or the whole chain as text).
fn io_error(error: &(dyn std::error::Error + 'static)) -> io::Error {
    errno(error).map_or_else(
        || io::Error::other(chain(error)),
        io::Error::from_raw_os_error,
    )
}

/// "outer: inner: innermost", for errors whose parts are all worth showing.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_has_the_expected_sections() {
        let object = section_names();
        for name in ["xdp.frags", ".maps", "license", ".BTF", ".BTF.ext"] {
            assert!(
                object.contains(&name.to_owned()),
                "missing {name}: {object:?}"
            );
        }
        assert!(
            !object.iter().any(|s| s.starts_with(".debug")),
            "not stripped"
        );
    }

    /// Section names from the ELF header, without an ELF crate: enough for a sanity check.
    fn section_names() -> Vec<String> {
        let u16_at = |at: usize| usize::from(u16::from_le_bytes([OBJECT[at], OBJECT[at + 1]]));
        let u64_at = |at: usize| {
            usize::try_from(u64::from_le_bytes(OBJECT[at..at + 8].try_into().unwrap())).unwrap()
        };
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        let shoff = u64_at(0x28);
        let (shentsize, shnum, shstrndx) = (u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
        let strtab = u64_at(shoff + shstrndx * shentsize + 0x18);
        (0..shnum)
            .map(|i| {
                let name =
                    u32::from_le_bytes(OBJECT[shoff + i * shentsize..][..4].try_into().unwrap());
                let start = strtab + usize::try_from(name).unwrap();
                let end = start + OBJECT[start..].iter().position(|&b| b == 0).unwrap();
                String::from_utf8_lossy(&OBJECT[start..end]).into_owned()
            })
            .collect()
    }

    #[test]
    fn types_cross_threads() {
        fn send<T: Send>() {}
        fn error<T: std::error::Error + Send + Sync + 'static>() {}
        send::<Steering>();
        error::<SteerError>();
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [XdpMode::Auto, XdpMode::Driver, XdpMode::Skb] {
            assert_eq!(mode.to_string().parse::<XdpMode>(), Ok(mode));
        }
        assert_eq!("native".parse::<XdpMode>(), Ok(XdpMode::Driver));
        assert_eq!("generic".parse::<XdpMode>(), Ok(XdpMode::Skb));
        assert!("hw"
            .parse::<XdpMode>()
            .unwrap_err()
            .contains("auto, driver or skb"));
    }

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", "a/b", "eth0:1", "has space", "sixteen_chars_xx", ".."] {
            assert!(
                matches!(
                    validate_ifname(bad),
                    Err(SteerError::InvalidInterfaceName { .. })
                ),
                "{bad:?}"
            );
        }
        validate_ifname("enp1s0f0np0").unwrap();
    }

    #[test]
    fn attachment_display_names_every_mode() {
        let state = netlink::LinkState {
            ifindex: 1,
            mtu: 1500,
            mac: None,
            drv_prog_id: 0,
            skb_prog_id: 7,
            hw_prog_id: 0,
        };
        let a = XdpAttachment::from_state(&state).unwrap();
        assert_eq!(a.to_string(), "program id 7 in skb mode");
        let none = netlink::LinkState {
            skb_prog_id: 0,
            ..state
        };
        assert_eq!(XdpAttachment::from_state(&none), None);
    }

    #[test]
    fn config_layout_matches_the_program() {
        let local = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let target = SteerConfig::new(Role::Target, Some(local));
        let b = target.to_bytes();
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 0);
        assert_eq!(
            u32::from_ne_bytes(b[4..8].try_into().unwrap()),
            F_CHECK_SOURCE | F_CHECK_DEST
        );
        assert_eq!(&b[8..14], &local);
        assert_eq!(&b[14..], &[0, 0]);
        // No MAC (lo) or an all-zero one: the source check alone.
        for mac in [None, Some([0; 6])] {
            let c = SteerConfig::new(Role::Target, mac);
            assert_eq!((c.flags, c.local_mac), (F_CHECK_SOURCE, [0; 6]));
        }
        // The initiator role checks no address.
        let c = SteerConfig::new(Role::Initiator, Some(local));
        assert_eq!((c.want_response, c.flags), (1, 0));
        assert_eq!(MacDisplay(local).to_string(), "02:11:22:33:44:55");
    }

    #[test]
    fn messages_are_actionable() {
        let e = SteerError::NeedPrivileges {
            action: "loading the XDP program for eth0".to_owned(),
            cause: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e
            .to_string()
            .contains("needs root or CAP_BPF+CAP_NET_ADMIN"));
        let e = SteerError::DriverModeUnsupported {
            ifname: "eth0".to_owned(),
        };
        assert!(e.to_string().contains("use --xdp-mode skb"));
    }
}
