//! The daemon's configuration: one model, filled either from the vblade-compatible command line
//! or from a TOML file (`xblade serve --config FILE`). Unknown keys are rejected, and every
//! error names the key or argument that is wrong.

use std::path::PathBuf;

use aoe::target::ExportState;
use aoe::wire::{parse_mac, Mac};
use serde::{Deserialize, Serialize};

/// How XDP is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    /// Driver (native) mode, else generic (skb) mode.
    #[default]
    Auto,
    /// Native XDP in the driver only.
    Driver,
    /// Generic XDP (works on any interface, slower).
    Skb,
}

/// Daemon-wide settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// XDP attach mode.
    pub xdp_mode: XdpModeArg,
    /// Replace an XDP program another tool attached.
    pub replace_xdp: bool,
    /// UMEM frames per worker (4 KiB each).
    pub frames: u32,
    /// CPUs to pin workers to, in order; empty: one per worker, avoiding the CPUs that take
    /// the NIC's interrupts (from /proc/interrupts) when there are enough others.
    pub cpus: Vec<usize>,
    /// Preferred busy polling on the AF_XDP sockets, in microseconds (real NICs; 0 = off).
    pub busy_poll: u32,
    /// NAPI budget for busy polling.
    pub busy_poll_budget: u16,
    /// io_uring kernel submission thread (SQPOLL).
    pub sqpoll: bool,
    /// io_uring completion polling (IOPOLL; NVMe with poll queues only).
    pub iopoll: bool,
    /// The control socket (default: `/run/xblade/control.sock` for `xblade serve`,
    /// `/run/xblade/IFACE.sock` for the vblade-style form).
    pub control: Option<PathBuf>,
    /// Where the exports' AoE state (config string, mask and reserve lists) is kept across
    /// restarts (default `/var/lib/xblade`).
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`127.0.0.1:9477`); off when unset.
    pub metrics: Option<String>,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            xdp_mode: XdpModeArg::Auto,
            replace_xdp: false,
            frames: 4096,
            cpus: Vec::new(),
            busy_poll: 0,
            busy_poll_budget: 64,
            sqpoll: false,
            iopoll: false,
            control: None,
            state_dir: None,
            metrics: None,
        }
    }
}

/// An interface to serve on.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// NIC queues to bind (one worker each).
    #[serde(default = "default_queues")]
    pub queues: Vec<u32>,
}

fn default_queues() -> Vec<u32> {
    vec![0]
}

/// How the backing store is opened.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IoArg {
    /// O_DIRECT (default).
    #[default]
    Direct,
    /// Through the page cache, chosen explicitly by the admin.
    Buffered,
}

/// One export.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Shelf (0..=65534, not 4095).
    pub shelf: u16,
    /// Slot (0..=254).
    pub slot: u8,
    /// Backing file or block device.
    pub path: PathBuf,
    /// Start of the export inside the store, in 512-byte sectors.
    #[serde(default)]
    pub offset: u64,
    /// Length of the export in sectors (default: to the end of the store).
    #[serde(default)]
    pub length: Option<u64>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// `direct` or `buffered`.
    #[serde(default)]
    pub io: IoArg,
    /// Acknowledge writes before they are durable (FLUSH CACHE then syncs).
    #[serde(default)]
    pub write_back: bool,
    /// Advertised buffer count.
    #[serde(default = "default_bufcnt")]
    pub bufcnt: u16,
    /// Only these initiator MACs are served (the AoE MAC mask list, pre-set).
    #[serde(default)]
    pub mask: Vec<String>,
    /// Interfaces to serve this export on (default: all).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// IDENTIFY serial number (default `shelf.slot:hostname`).
    #[serde(default)]
    pub serial: Option<String>,
}

fn default_bufcnt() -> u16 {
    aoe::target::DEFAULT_BUFCNT
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Daemon-wide settings.
    #[serde(default)]
    pub daemon: Daemon,
    /// Interfaces.
    #[serde(rename = "interface")]
    pub interfaces: Vec<Interface>,
    /// Exports.
    #[serde(rename = "export")]
    pub exports: Vec<Export>,
}

/// A configuration error, for a person.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// TOML syntax or schema.
    #[error("{path}: {msg}")]
    Toml {
        /// The file.
        path: String,
        /// What toml says (names the key and line).
        msg: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parse a TOML document (`path` only names it in errors) and validate it.
    pub fn from_toml(path: &str, text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: path.into(),
            msg: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Check values the types cannot: addresses, duplicates, MACs, interface names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.interfaces.is_empty() {
            return bad(
                "no [[interface]] given: name at least one network interface to serve on".into(),
            );
        }
        if self.exports.is_empty() {
            return bad("no [[export]] given: name at least one backing store to export".into());
        }
        for i in &self.interfaces {
            if i.queues.is_empty() {
                return bad(format!("interface {}: `queues` is empty", i.name));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.exports {
            let at = format!("export e{}.{} ({})", e.shelf, e.slot, e.path.display());
            if !ExportState::valid_address(e.shelf, e.slot) {
                return bad(format!(
                    "{at}: shelf {} / slot {} is not allowed (shelf 65535 and slot 255 are the broadcast \
                     wildcards, and the Linux initiator ignores shelf 4095)",
                    e.shelf, e.slot
                ));
            }
            if !seen.insert((e.shelf, e.slot)) {
                return bad(format!("{at}: e{}.{} is exported twice", e.shelf, e.slot));
            }
            if e.bufcnt < 2 {
                return bad(format!(
                    "{at}: bufcnt {} is too small (the Linux initiator needs at least 2)",
                    e.bufcnt
                ));
            }
            for m in &e.mask {
                if parse_mac(m).is_none() {
                    return bad(format!(
                        "{at}: mask entry {m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"
                    ));
                }
            }
            for n in &e.interfaces {
                if !self.interfaces.iter().any(|i| &i.name == n) {
                    return bad(format!(
                        "{at}: interface {n:?} is not one of the [[interface]] entries"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Export {
    /// The static MAC mask as MACs (validated already).
    pub fn mask_macs(&self) -> Vec<Mac> {
        self.mask.iter().filter_map(|m| parse_mac(m)).collect()
    }
    /// Whether the export is served on `iface`.
    pub fn on(&self, iface: &str) -> bool {
        self.interfaces.is_empty() || self.interfaces.iter().any(|n| n == iface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [daemon]
        xdp_mode = "skb"
        [[interface]]
        name = "eth1"
        [[export]]
        shelf = 1
        slot = 0
        path = "/srv/disk.img"
        mask = ["02:00:00:00:00:01"]
    "#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::from_toml("x.toml", GOOD).unwrap();
        assert_eq!(c.daemon.xdp_mode, XdpModeArg::Skb);
        assert_eq!(c.interfaces[0].queues, vec![0]);
        let e = &c.exports[0];
        assert_eq!(
            (e.bufcnt, e.io, e.write_back, e.read_only),
            (64, IoArg::Direct, false, false)
        );
        assert_eq!(e.mask_macs(), vec![[2, 0, 0, 0, 0, 1]]);
        assert!(e.on("eth1"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Config::from_toml(
            "x.toml",
            &GOOD.replace("slot = 0", "slot = 0\nreadonly = true"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("readonly") && msg.contains("x.toml"), "{msg}");
        let err = Config::from_toml(
            "x.toml",
            &GOOD.replace("xdp_mode = \"skb\"", "xdp_mode = \"fast\""),
        )
        .unwrap_err();
        assert!(err.to_string().contains("xdp_mode"), "{err}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (from, to, needle) in [
            ("shelf = 1", "shelf = 65535", "broadcast"),
            ("shelf = 1", "shelf = 4095", "4095"),
            ("slot = 0", "slot = 255", "slot 255"),
            ("\"02:00:00:00:00:01\"", "\"nope\"", "not a MAC"),
            ("slot = 0", "slot = 0\nbufcnt = 1", "bufcnt"),
            ("slot = 0", "slot = 0\ninterfaces = [\"eth9\"]", "eth9"),
        ] {
            let err = Config::from_toml("x.toml", &GOOD.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{to}: {err}");
        }
        let twice = format!("{GOOD}\n[[export]]\nshelf = 1\nslot = 0\npath = \"/b\"\n");
        assert!(Config::from_toml("x.toml", &twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
