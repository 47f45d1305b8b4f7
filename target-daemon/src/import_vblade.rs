//! `xblade import-vblade DIR`: Debian's vblade exports (`/etc/vblade.conf.d/*.conf`) as one
//! xblade.toml.
//!
//! Debian's vblade package (vblade-persistence(5)) keeps one export per file: `NAME.conf` is
//! the instance `vblade@NAME`, a POSIX shell fragment that a systemd generator sources and that
//! `vblade@.service` reads as an `EnvironmentFile=`:
//!
//! ```sh
//! shelf=14
//! slot=2
//! netif=ens3
//! filename=/dev/mapper/export
//! options='-r -m 11:22:33:44:55:66,22:33:44:55:66:77 -o 8'
//! ionice='--class best-effort --classdata 7'
//! ```
//!
//! `shelf`, `slot`, `netif` and `filename` are mandatory: vblade ignores a file that lacks one
//! (Debian's skeleton.conf, all comments, is such a file), and so does the conversion, saying
//! so in a comment. `options` are vblade's own (`-b -d -s -r -m -o -l`, getopt style, numbers
//! of `-o`/`-l` read like C's strtoll: `0x` hex, leading `0` octal). `ionice` has no per-export
//! counterpart in xblade and becomes a comment.
//!
//! The result has one `[[interface]]` per distinct NIC and one `[[export]]` per file. A file
//! that exports the same shelf.slot and store as another on a second NIC (multipath) joins
//! that export's `interfaces`. What xblade cannot reproduce is an error naming the file and
//! what it is: an unknown option or variable, shell expansion (`$x`, backquotes: the systemd
//! unit never expanded them either), a MAC vblade would have ignored, two different exports
//! at one shelf.slot. The text is checked with xblade's own parser before it is returned.
//! Pure: it reads the directory and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};

use crate::config::Config;

/// The variables vblade's conf.d files may set (vblade-persistence(5)).
const VARIABLES: [&str; 6] = ["shelf", "slot", "netif", "filename", "options", "ionice"];

/// Reads every `*.conf` in `dir` (a vblade conf.d directory, as Debian's vblade package lays
/// it out) and returns the equivalent xblade TOML configuration.
pub fn convert(dir: &Path) -> anyhow::Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the vblade directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    // `*.conf` as vblade's generator globs it: no dot files, regular files (or links to them).
    files.retain(|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        !name.starts_with('.') && name.ends_with(".conf") && name.len() > ".conf".len()
    });
    files.sort();
    let mut plan = Plan::default();
    for path in &files {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if !meta.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let instance = systemd_escape(name.trim_end_matches(".conf"));
        let at = path.display().to_string();
        match parse_file(&text).map_err(|e| anyhow!("{at}: {e}"))? {
            Parsed::Incomplete(missing) => plan.skipped.push(format!("{name}: no {missing}=")),
            Parsed::Export(export) => plan.add(&at, &name, &instance, export)?,
        }
    }
    if plan.exports.is_empty() {
        let why = if plan.skipped.is_empty() {
            "no *.conf file".to_owned()
        } else {
            format!(
                "only incomplete files, which vblade skips too ({})",
                plan.skipped.join("; ")
            )
        };
        bail!("{}: no vblade export to convert: {why}", dir.display());
    }
    let text = plan.render(dir);
    Config::from_toml("the converted configuration", &text).map_err(|e| {
        anyhow!("the converted configuration does not validate ({e}); it was:\n{text}")
    })?;
    Ok(text)
}

/// One conf.d file, read.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A mandatory variable is missing or empty (the first one, by name).
    Incomplete(&'static str),
    /// A complete export.
    Export(VbladeExport),
}

/// What one complete file says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VbladeExport {
    shelf: u16,
    slot: u8,
    netif: String,
    filename: String,
    opts: Options,
    ionice: Option<String>,
}

/// vblade's options (`getopt(argc, argv, "b:dsrm:o:l:")`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Options {
    bufcnt: Option<u16>,
    offset: Option<u64>,
    length: Option<u64>,
    read_only: bool,
    direct: bool,
    sync: bool,
    /// Normalised to `aa:bb:cc:dd:ee:ff`, in order, without duplicates.
    mask: Vec<String>,
}

impl Options {
    /// The settings that make two files the same export (not -d/-s: they are defaults here).
    fn export_settings(&self) -> (Option<u16>, Option<u64>, Option<u64>, bool, &[String]) {
        (
            self.bufcnt,
            self.offset,
            self.length,
            self.read_only,
            &self.mask,
        )
    }
}

/// Parses one file: its assignments, then the values.
fn parse_file(text: &str) -> Result<Parsed, String> {
    let mut vars: BTreeMap<&'static str, String> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let Some((key, value)) = assignment(line).map_err(|e| format!("line {line_no}: {e}"))?
        else {
            continue;
        };
        let Some(known) = VARIABLES.iter().find(|v| **v == key) else {
            return Err(format!(
                "line {line_no}: unknown variable `{key}` (vblade reads {})",
                VARIABLES.join(", ")
            ));
        };
        // As in sh and in systemd's EnvironmentFile=, the last assignment wins.
        vars.insert(known, value);
    }
    let get = |k: &str| vars.get(k).map(String::as_str).unwrap_or("");
    for k in ["shelf", "slot", "netif", "filename"] {
        if get(k).is_empty() {
            return Ok(Parsed::Incomplete(k));
        }
    }
    let shelf: u16 = get("shelf")
        .parse()
        .map_err(|_| format!("shelf={} is not a number from 0 to 65534", get("shelf")))?;
    let slot: u8 = get("slot")
        .parse()
        .map_err(|_| format!("slot={} is not a number from 0 to 254", get("slot")))?;
    if !aoe::target::ExportState::valid_address(shelf, slot) {
        return Err(format!(
            "e{shelf}.{slot}: shelf 65535 and slot 255 are the broadcast wildcards, and the \
             Linux initiator ignores shelf 4095"
        ));
    }
    let netif = get("netif");
    let filename = get("filename");
    for (k, v) in [("netif", netif), ("filename", filename)] {
        // vblade@.service passes them unquoted ($netif $filename): a space splits them there.
        if v.contains(char::is_whitespace) {
            return Err(format!(
                "{k}={v:?} contains a space, which vblade@.service splits into two arguments"
            ));
        }
    }
    let opts = parse_options(get("options"))?;
    let ionice = Some(get("ionice").to_owned()).filter(|s| !s.is_empty());
    Ok(Parsed::Export(VbladeExport {
        shelf,
        slot,
        netif: netif.to_owned(),
        filename: filename.to_owned(),
        opts,
        ionice,
    }))
}

/// One line: `None` for a blank or comment line, else `NAME=VALUE` with the value unquoted.
/// Only what sh (vblade's generator sources the file) and systemd's EnvironmentFile=
/// (vblade@.service reads it) read alike is accepted: a single word, or one '...' or "..."
/// string. The rest is an error: shell expansion, several words, text after a closing quote
/// (a trailing `# comment` there is part of the value for systemd), backslashes outside quotes.
fn assignment(line: &str) -> Result<Option<(&str, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_len = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(line.len());
    let (key, rest) = line.split_at(name_len);
    let starts_ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    let Some(rest) = rest.strip_prefix('=').filter(|_| starts_ok) else {
        return Err(format!("`{line}` is not a NAME=VALUE assignment"));
    };
    let expansion = format!(
        "{key}: shell expansion ($, `) is not supported (vblade@.service never expanded it): \
         write the value out"
    );
    let mut value = String::new();
    let mut chars = rest.chars();
    match chars.next() {
        None => {}
        Some('\'') => loop {
            match chars.next() {
                Some('\'') => break,
                Some(c) => value.push(c),
                None => return Err(format!("{key}: unterminated ' quote")),
            }
        },
        Some('"') => loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c @ ('"' | '\\' | '$' | '`')) => value.push(c),
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("{key}: unterminated \" quote")),
                },
                Some('$' | '`') => return Err(expansion),
                Some(c) => value.push(c),
                None => return Err(format!("{key}: unterminated \" quote")),
            }
        },
        Some(_) => {
            if rest.contains(['$', '`']) {
                return Err(expansion);
            }
            if rest.contains(char::is_whitespace) {
                return Err(format!(
                    "{key}: the value has several words (or a comment after it); quote it \
                     ({key}='...') and put a comment on a line of its own"
                ));
            }
            if let Some(c) = rest.chars().find(|c| "'\"\\;&|<>()".contains(*c)) {
                return Err(format!(
                    "{key}: `{c}` inside a word is read differently by sh and by systemd: \
                     quote the whole value ({key}='...')"
                ));
            }
            return Ok(Some((key, rest.to_owned())));
        }
    }
    if !chars.as_str().is_empty() {
        return Err(format!(
            "{key}: text after the closing quote (`{}`), which sh and systemd's \
             EnvironmentFile= read differently; put a comment on a line of its own",
            chars.as_str()
        ));
    }
    Ok(Some((key, value)))
}

/// `name` as systemd-escape writes it into a unit name (vblade's generator escapes the
/// instance so), for the comments that name `vblade@INSTANCE`.
fn systemd_escape(name: &str) -> String {
    let mut out = String::new();
    for (i, b) in name.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// vblade's options, as its getopt reads them: clustered flags (`-rd`), a value attached
/// (`-o8`) or in the next word (`-o 8`), repeated `-m` adding up.
fn parse_options(options: &str) -> Result<Options, String> {
    let words: Vec<&str> = options.split_whitespace().collect();
    let mut o = Options::default();
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        i += 1;
        if word.starts_with("--") && word.len() > 2 {
            return Err(format!(
                "option {word}: vblade has no long options (xblade's own settings go in the \
                 converted file)"
            ));
        }
        if word == "--" {
            if let Some(extra) = words.get(i) {
                return Err(format!(
                    "options: `{extra}` after `--` (vblade@.service passes shelf, slot, \
                     netif and filename itself)"
                ));
            }
            break;
        }
        let Some(flags) = word.strip_prefix('-').filter(|f| !f.is_empty()) else {
            return Err(format!(
                "options: `{word}` is not an option (vblade@.service passes shelf, slot, netif \
                 and filename itself)"
            ));
        };
        let mut rest = flags;
        while let Some(flag) = rest.chars().next() {
            rest = &rest[flag.len_utf8()..];
            if matches!(flag, 'b' | 'm' | 'o' | 'l') {
                let value = if !rest.is_empty() {
                    std::mem::take(&mut rest)
                } else if let Some(next) = words.get(i) {
                    i += 1;
                    next
                } else {
                    return Err(format!("option -{flag} needs a value"));
                };
                option_value(&mut o, flag, value)?;
                continue;
            }
            match flag {
                'd' => o.direct = true,
                's' => o.sync = true,
                'r' => o.read_only = true,
                _ => {
                    return Err(format!(
                        "option -{flag} is not one of vblade's (-b -d -s -r -m -o -l), so \
                         there is nothing to convert it to"
                    ))
                }
            }
        }
    }
    Ok(o)
}

fn option_value(o: &mut Options, flag: char, value: &str) -> Result<(), String> {
    match flag {
        'b' => {
            let n: u32 = value
                .parse()
                .map_err(|_| format!("option -b {value}: not a buffer count"))?;
            let n = u16::try_from(n).ok().filter(|n| *n >= 2).ok_or_else(|| {
                format!(
                    "option -b {value}: xblade advertises 2 to 65535 buffers (the Linux \
                         initiator sends nothing with fewer than 2)"
                )
            })?;
            o.bufcnt = Some(n);
        }
        'o' => {
            o.offset = Some(
                c_integer(value)
                    .ok_or_else(|| format!("option -o {value}: not a number of sectors"))?,
            )
        }
        'l' => {
            o.length = Some(
                c_integer(value)
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("option -l {value}: not a number of sectors (>= 1)"))?,
            )
        }
        'm' => {
            // vblade drops an entry it cannot parse ("ignoring mask"), and with none left it
            // serves everyone: refuse instead, rather than widen or narrow the list silently.
            for entry in value.split(',').filter(|e| !e.is_empty()) {
                let mac = vblade_mac(entry).ok_or_else(|| {
                    format!(
                        "option -m: `{entry}` is not a MAC address (12 hex digits, with or \
                         without colons); vblade would have ignored it"
                    )
                })?;
                if !o.mask.contains(&mac) {
                    o.mask.push(mac);
                }
            }
        }
        _ => unreachable!("only options that take a value"),
    }
    Ok(())
}

/// A non-negative number the way C's `strtoll(s, &end, 0)` reads all of `s`: `0x` hex,
/// a leading `0` octal, else decimal.
fn c_integer(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix)
        .ok()
        .filter(|n| i64::try_from(*n).is_ok())
}

/// A MAC as vblade's parseether reads it (pairs of hex digits, each optionally followed by a
/// colon, upper or lower case), as `aa:bb:cc:dd:ee:ff`.
fn vblade_mac(s: &str) -> Option<String> {
    let mut rest = s;
    let mut out = Vec::with_capacity(6);
    for i in 0..6 {
        let pair = rest.get(..2)?;
        if !pair.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        out.push(pair.to_ascii_lowercase());
        rest = &rest[2..];
        if i < 5 {
            rest = rest.strip_prefix(':').unwrap_or(rest);
        }
    }
    rest.is_empty().then(|| out.join(":"))
}

/// The exports and interfaces gathered so far.
#[derive(Default)]
struct Plan {
    /// NICs in the order first seen.
    interfaces: Vec<String>,
    exports: Vec<Planned>,
    /// Incomplete files, with why.
    skipped: Vec<String>,
}

struct Planned {
    export: VbladeExport,
    /// The NICs it is served on (more than one: multipath).
    netifs: Vec<String>,
    /// `(file name, instance)` of each file that contributed.
    sources: Vec<(String, String)>,
    /// The full path of the first file, for messages.
    first: String,
}

impl Plan {
    fn add(&mut self, at: &str, name: &str, instance: &str, e: VbladeExport) -> anyhow::Result<()> {
        if !self.interfaces.contains(&e.netif) {
            self.interfaces.push(e.netif.clone());
        }
        let source = (name.to_owned(), instance.to_owned());
        if let Some(p) = self
            .exports
            .iter_mut()
            .find(|p| (p.export.shelf, p.export.slot) == (e.shelf, e.slot))
        {
            let same = p.export.filename == e.filename
                && p.export.opts.export_settings() == e.opts.export_settings();
            if !same {
                bail!(
                    "{at}: e{}.{} is also exported by {}, with another store or other options; \
                     an xblade serves each shelf.slot once (on as many NICs as you list), so \
                     give one of them another address",
                    e.shelf,
                    e.slot,
                    p.first
                );
            }
            if p.netifs.contains(&e.netif) {
                bail!(
                    "{at}: e{}.{} on {} is also exported by {}",
                    e.shelf,
                    e.slot,
                    e.netif,
                    p.first
                );
            }
            p.netifs.push(e.netif.clone());
            p.sources.push(source);
            return Ok(());
        }
        self.exports.push(Planned {
            netifs: vec![e.netif.clone()],
            export: e,
            sources: vec![source],
            first: at.to_owned(),
        });
        Ok(())
    }

    fn render(&self, dir: &Path) -> String {
        let mut t = String::new();
        let n = self.exports.len();
        let _ = writeln!(
            t,
            "# xblade.toml converted by `xblade import-vblade` from the vblade exports in\n\
             # {}: {n} export{} on {} interface{}.\n\
             #\n\
             # Before xblade.service serves them, stop and disable the vblade units (one program\n\
             # per NIC: XDP), e.g. systemctl disable --now vblade.service 'vblade@*'.\n\
             # What changes (deploy/README.md, \"Coming from vblade\"):\n\
             # - xblade acknowledges a write once it is durable (O_DIRECT and RWF_DSYNC): vblade's\n\
             #   -d and -s are its defaults, and vblade without -s acknowledged from the page cache.\n\
             # - FLUSH CACHE really syncs; vblade answered it without syncing.\n\
             # - An export without bufcnt advertises 64 outstanding requests (vblade: 16).",
            dir.display(),
            if n == 1 { "" } else { "s" },
            self.interfaces.len(),
            if self.interfaces.len() == 1 { "" } else { "s" },
        );
        for s in &self.skipped {
            let _ = writeln!(t, "# Skipped {s} (vblade skips it too).");
        }
        t.push_str(
            "\n[daemon]\nxdp_mode = \"auto\"\n\n\
             # One worker per interface (queues = [0]). To serve more queues, steer initiators\n\
             # to them first (deploy/tune-nic.sh --steer MAC=QUEUE).",
        );
        for name in &self.interfaces {
            let _ = writeln!(t, "\n[[interface]]\nname = {}\nqueues = [0]", quote(name));
        }
        for p in &self.exports {
            let e = &p.export;
            let o = &e.opts;
            let from: Vec<String> = p
                .sources
                .iter()
                .map(|(name, instance)| format!("{name} (vblade@{instance})"))
                .collect();
            let _ = writeln!(t, "\n# e{}.{}: {}", e.shelf, e.slot, from.join(", "));
            let _ = writeln!(
                t,
                "[[export]]\nshelf = {}\nslot = {}\npath = {}",
                e.shelf,
                e.slot,
                quote(&e.filename)
            );
            let netifs: Vec<String> = p.netifs.iter().map(|n| quote(n)).collect();
            let _ = writeln!(t, "interfaces = [{}]", netifs.join(", "));
            let mut setting = |line: String, flag: &str| {
                let _ = writeln!(t, "{line:<24}  # {flag}");
            };
            if let Some(v) = o.offset {
                setting(format!("offset = {v}"), "-o, in sectors");
            }
            if let Some(v) = o.length {
                setting(format!("length = {v}"), "-l, in sectors");
            }
            if o.read_only {
                setting("read_only = true".into(), "-r");
            }
            if let Some(v) = o.bufcnt {
                setting(format!("bufcnt = {v}"), "-b");
            }
            if !o.mask.is_empty() {
                let macs: Vec<String> = o.mask.iter().map(|m| quote(m)).collect();
                setting(format!("mask = [{}]", macs.join(", ")), "-m");
            }
            let given: Vec<&str> = [(o.direct, "-d"), (o.sync, "-s")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| *f)
                .collect();
            if !given.is_empty() {
                let _ = writeln!(
                    t,
                    "# {}: xblade's defaults (io = \"direct\", write_back = false).",
                    given.join(" ")
                );
            } else if !o.read_only {
                t.push_str(
                    "# vblade ran this one without -s, acknowledging writes from the page cache;\n\
                     # xblade waits until they are durable (write_back = false).\n",
                );
            }
            if let Some(ionice) = &e.ionice {
                let _ = writeln!(
                    t,
                    "# Not carried over: ionice={}.\n\
                     # xblade has no I/O priority per export; for the whole daemon: systemctl\n\
                     # edit xblade, then IOSchedulingClass= and IOSchedulingPriority=.",
                    quote(ionice)
                );
            }
        }
        t
    }
}

/// A TOML string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IoArg;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vblade.conf.d")
    }

    /// A conf.d directory holding `files`.
    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn convert_one(text: &str) -> anyhow::Result<String> {
        convert(dir_with(&[("disk.conf", text)]).path())
    }

    fn err_of(text: &str) -> String {
        format!("{:#}", convert_one(text).unwrap_err())
    }

    #[test]
    fn debians_conf_d_converts_to_a_configuration_xblade_accepts() {
        let text = convert(&fixtures()).unwrap();
        let c = Config::from_toml("converted", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let nics: Vec<&str> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(nics, ["eth1", "eth2", "ens3"], "{text}");
        assert!(c.interfaces.iter().all(|i| i.queues == [0]));
        let addrs: Vec<(u16, u8)> = c.exports.iter().map(|e| (e.shelf, e.slot)).collect();
        assert_eq!(addrs, [(1, 0), (14, 2), (1, 1)], "{text}");

        // e1.0-eth1.conf and e1.0-eth2.conf: one store on two NICs (multipath), -d -s -b 32.
        let disk = &c.exports[0];
        assert_eq!(
            disk.path,
            Path::new("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4")
        );
        assert_eq!(disk.interfaces, ["eth1", "eth2"]);
        assert_eq!(
            (disk.bufcnt, disk.read_only, disk.offset, disk.length),
            (32, false, 0, None)
        );
        assert_eq!((disk.io, disk.write_back), (IoArg::Direct, false));
        assert!(disk.mask.is_empty());
        assert!(text.contains("# -d -s: xblade's defaults"), "{text}");

        // golden.conf: read-only, hex length, colon-less MAC, attached values, double quotes.
        let golden = &c.exports[2];
        assert_eq!(golden.path, Path::new("/srv/aoe/golden.img"));
        assert_eq!(golden.interfaces, ["eth1"]);
        assert!(golden.read_only);
        assert_eq!((golden.offset, golden.length), (0, Some(0x10_0000)));
        assert_eq!(golden.mask, ["52:54:00:12:34:56", "52:54:00:12:34:57"]);
        assert_eq!(golden.bufcnt, aoe::target::DEFAULT_BUFCNT);

        // example.conf: vblade-persistence(5)'s example, ionice and all.
        let example = &c.exports[1];
        assert_eq!(example.path, Path::new("/dev/mapper/export"));
        assert_eq!(example.interfaces, ["ens3"]);
        assert!(example.read_only);
        assert_eq!(example.offset, 8);
        assert_eq!(example.mask, ["11:22:33:44:55:66", "22:33:44:55:66:77"]);
        assert!(
            text.contains("# Not carried over: ionice=\"--class best-effort --classdata 7\"."),
            "{text}"
        );

        // Files vblade would skip are skipped, and said to be.
        assert!(
            text.contains("# Skipped incomplete.conf: no filename="),
            "{text}"
        );
        assert!(
            text.contains("# Skipped skeleton.conf: no shelf="),
            "{text}"
        );
        assert!(
            !text.contains("not-a-conf") && !text.contains("e9.9"),
            "{text}"
        );
        // Where each export comes from, with the unit names vblade's generator made.
        assert!(
            text.contains(
                r"# e1.0: e1.0-eth1.conf (vblade@e1.0\x2deth1), e1.0-eth2.conf (vblade@e1.0\x2deth2)"
            ),
            "{text}"
        );
        assert_eq!(systemd_escape(".a/b c-d"), r"\x2ea-b\x20c\x2dd");
    }

    #[test]
    fn a_plain_export_gets_a_note_on_durability_and_defaults() {
        let text = convert_one("shelf=3\nslot=4\nnetif=eth0\nfilename=/srv/aoe/a.img\n").unwrap();
        let c = Config::from_toml("x", &text).unwrap();
        let e = &c.exports[0];
        assert_eq!(
            (e.shelf, e.slot, e.read_only, e.write_back),
            (3, 4, false, false)
        );
        assert!(text.contains("without -s"), "{text}");
        assert!(text.contains("1 export on 1 interface."), "{text}");
    }

    #[test]
    fn options_read_like_vblades_getopt() {
        let o =
            parse_options("-rds -b16 -o 010 -l0x20 -m 0a0b0c0d0e0f -m AA:BB:CC:DD:EE:FF,").unwrap();
        assert!(o.read_only && o.direct && o.sync);
        // strtoll base 0: 010 is octal.
        assert_eq!(
            (o.bufcnt, o.offset, o.length),
            (Some(16), Some(8), Some(32))
        );
        assert_eq!(o.mask, ["0a:0b:0c:0d:0e:0f", "aa:bb:cc:dd:ee:ff"]);
        assert_eq!(parse_options("").unwrap(), Options::default());
        assert!(parse_options("-r --").unwrap().read_only);
        assert_eq!(c_integer("0"), Some(0));
        assert_eq!(c_integer("09"), None);
        assert_eq!(
            vblade_mac("aa:bbcc:dd:eeff").as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(vblade_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(vblade_mac("aa:bb:cc:dd:ee:ff:00"), None);
    }

    #[test]
    fn values_read_as_sh_and_systemd_both_read_them() {
        let a = |l: &str| assignment(l).unwrap().map(|(k, v)| (k.to_owned(), v));
        assert_eq!(a("  # comment"), None);
        assert_eq!(a(""), None);
        assert_eq!(a("shelf=1"), Some(("shelf".into(), "1".into())));
        assert_eq!(
            a("  options='-m $1,2'  "),
            Some(("options".into(), "-m $1,2".into()))
        );
        assert_eq!(
            a(r#"filename="/a \"b\" \c""#),
            Some(("filename".into(), r#"/a "b" \c"#.into()))
        );
        assert_eq!(a("options="), Some(("options".into(), String::new())));
        assert_eq!(a("netif=eth0#1"), Some(("netif".into(), "eth0#1".into())));
        for bad in [
            "shelf",
            "export shelf=1",
            "1x=2",
            "shelf = 1",
            "options=-r -d",
            "options=-r # read-only",
            "options='-r' # read-only",
            "options='-r'-d",
            "options=-r'-d'",
            r"filename=/a\ b",
            "filename=$HOME/x",
            "filename=\"${DIR}/x\"",
            "filename=`pwd`",
            "options='-r",
            "options=\"-r",
            "options=-r;rm",
        ] {
            assert!(assignment(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn what_cannot_be_converted_is_an_error_naming_file_and_option() {
        let base = "shelf=1\nslot=0\nnetif=eth1\nfilename=/dev/sdb\n";
        for (extra, needle) in [
            ("options='-t 5'", "option -t is not one of vblade's"),
            ("options='-o'", "option -o needs a value"),
            ("options='-o -1'", "option -o -1"),
            ("options='-l 0'", "option -l 0"),
            ("options='-b 1'", "option -b 1"),
            ("options='-b 70000'", "option -b 70000"),
            ("options='-m 11:22:33'", "option -m: `11:22:33`"),
            ("options='--buffered'", "option --buffered"),
            ("options='-r /dev/sdc'", "`/dev/sdc` is not an option"),
            ("Shelf=2", "unknown variable `Shelf`"),
            ("filename=$DISK", "line 5: filename: shell expansion"),
            ("filename='/srv/a b.img'", "contains a space"),
        ] {
            let err = err_of(&format!("{base}{extra}\n"));
            assert!(
                err.contains("disk.conf") && err.contains(needle),
                "{extra}: {err}"
            );
        }
        for (text, needle) in [
            ("shelf=65535\nslot=0\nnetif=e\nfilename=/f\n", "broadcast"),
            ("shelf=4095\nslot=0\nnetif=e\nfilename=/f\n", "4095"),
            ("shelf=1\nslot=255\nnetif=e\nfilename=/f\n", "broadcast"),
            ("shelf=x\nslot=0\nnetif=e\nfilename=/f\n", "shelf=x"),
            ("shelf=1\nslot=256\nnetif=e\nfilename=/f\n", "slot=256"),
        ] {
            let err = err_of(text);
            assert!(err.contains("disk.conf") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn one_shelf_slot_is_one_export() {
        let a = "shelf=1\nslot=0\nnetif=eth1\nfilename=/dev/sdb\n";
        // Same address, another store: refused, naming both files.
        let dir = dir_with(&[("a.conf", a), ("b.conf", &a.replace("sdb", "sdc"))]);
        let err = format!("{:#}", convert(dir.path()).unwrap_err());
        assert!(
            err.contains("b.conf") && err.contains("a.conf") && err.contains("e1.0"),
            "{err}"
        );
        // Same address, same store, other options: refused.
        let dir = dir_with(&[
            ("a.conf", a),
            (
                "b.conf",
                &format!("{a}options=-r\n").replace("eth1", "eth2"),
            ),
        ]);
        assert!(convert(dir.path()).is_err());
        // Same everything on the same NIC twice: refused.
        let dir = dir_with(&[("a.conf", a), ("b.conf", a)]);
        let err = format!("{:#}", convert(dir.path()).unwrap_err());
        assert!(err.contains("on eth1"), "{err}");
    }

    #[test]
    fn nothing_to_convert_says_so() {
        let empty = dir_with(&[]);
        let err = format!("{:#}", convert(empty.path()).unwrap_err());
        assert!(err.contains("no *.conf file"), "{err}");
        let skeleton = dir_with(&[("skeleton.conf", "# shelf=\n# slot=\n")]);
        let err = format!("{:#}", convert(skeleton.path()).unwrap_err());
        assert!(
            err.contains(
                "only incomplete files, which vblade skips too (skeleton.conf: no shelf=)"
            ),
            "{err}"
        );
        let missing = convert(Path::new("/nonexistent/vblade.conf.d")).unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/vblade.conf.d"));
    }
}
