//! The exports' AoE state that initiators set (config string, MAC mask list, reserve list),
//! kept across restarts: one JSON file per export in the state directory (default
//! `/var/lib/xblade`), `e1.0.json`:
//!
//! ```json
//! {
//!   "format": 1,
//!   "export": "e1.0",
//!   "config": "cluster-a",
//!   "config_hex": "636c75737465722d61",
//!   "mask": ["02:00:00:00:00:01"],
//!   "reserve": []
//! }
//! ```
//!
//! `config_hex` holds the exact bytes and is what is loaded; `config` is there for people
//! (written only when the bytes are valid UTF-8). Files are replaced crash-safely: written
//! to `e1.0.json.tmp`, synced, renamed over `e1.0.json`, and the directory synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use aoe::wire::{mask, reserve, MAX_CONFIG};
use aoe::Mac;
use serde::{Deserialize, Serialize};

use crate::status::{hex, mac_string};

/// Layout version of the files.
pub const FORMAT: u32 = 1;

/// One export's persistent AoE state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedState {
    /// The config string (at most [`MAX_CONFIG`] bytes, any bytes).
    pub config: Vec<u8>,
    /// The MAC mask list (at most [`mask::MAX`]).
    pub mask: Vec<Mac>,
    /// The reserve list (at most [`reserve::MAX`]).
    pub reserve: Vec<Mac>,
}

/// The file, as serialized.
#[derive(Serialize, Deserialize)]
struct File1 {
    format: u32,
    export: String,
    /// For people: the config string when it is valid UTF-8. Ignored on load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    /// The config string's exact bytes.
    config_hex: String,
    mask: Vec<String>,
    reserve: Vec<String>,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// What to do when the state directory is not usable.
const DIR_HINT: &str = "choose a writable directory with --state-dir DIR or `state_dir` in \
    the [daemon] section of the configuration, fix its permissions, or under systemd let \
    StateDirectory=xblade create /var/lib/xblade (ProtectSystem=strict makes the rest of /var \
    read-only)";

impl StateDir {
    /// The state directory `path`, created (mode 0700) if missing, and checked writable.
    pub fn open(path: &Path) -> anyhow::Result<StateDir> {
        let shown = path.display();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| anyhow!("cannot create the state directory {shown}: {e}; {DIR_HINT}"))?;
        // Find out now, not at the first change an initiator makes (whose reply would wait).
        let probe = path.join(".xblade-write-test");
        let written = File::create(&probe).and_then(|f| f.sync_all());
        let _ = fs::remove_file(&probe);
        written
            .map_err(|e| anyhow!("cannot write in the state directory {shown}: {e}; {DIR_HINT}"))?;
        Ok(StateDir {
            dir: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `export`'s state (`DIR/e1.0.json`).
    pub fn path(&self, export: &str) -> PathBuf {
        self.dir.join(format!("{export}.json"))
    }

    fn tmp_path(&self, export: &str) -> PathBuf {
        self.dir.join(format!("{export}.json.tmp"))
    }

    /// `export`'s saved state; `None` if it has none yet.
    pub fn load(&self, export: &str) -> anyhow::Result<Option<SavedState>> {
        let path = self.path(export);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(anyhow!(
                    "cannot read {}: {e}; fix its permissions, or remove it (export {export} \
                     then starts with an empty config string, mask and reserve lists)",
                    path.display()
                ))
            }
        };
        parse(&text, export).map(Some).map_err(|e| {
            anyhow!(
                "{} is not a valid xblade state file: {e:#}; fix it or remove it (export \
                 {export} then starts with an empty config string, mask and reserve lists)",
                path.display()
            )
        })
    }

    /// Replaces `export`'s saved state with `s`, crash-safely: when this returns, the new state
    /// is on disk; whatever happens before, the old one or the new one is, never a mix.
    pub fn save(&self, export: &str, s: &SavedState) -> io::Result<()> {
        if export.is_empty() || export.contains(['/', '\0']) || export.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{export:?} is not an export name"),
            ));
        }
        // Never write what load() would refuse.
        check_limits(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut text = serde_json::to_string_pretty(&to_file(export, s))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        text.push('\n');

        let tmp = self.tmp_path(export);
        let path = self.path(export);
        let step = |what: &str, p: &Path| {
            let p = p.display().to_string();
            let what = what.to_owned();
            move |e: io::Error| io::Error::new(e.kind(), format!("{what} {p}: {e}"))
        };
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(step("cannot create", &tmp))?;
            // A leftover of a crash may have had another mode.
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(step("cannot chmod", &tmp))?;
            f.write_all(text.as_bytes())
                .map_err(step("cannot write", &tmp))?;
            f.sync_all().map_err(step("cannot sync", &tmp))?;
            fs::rename(&tmp, &path).map_err(step("cannot rename over", &path))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is durable once the directory is.
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(step("cannot sync the directory", &self.dir))
    }
}

fn to_file(export: &str, s: &SavedState) -> File1 {
    File1 {
        format: FORMAT,
        export: export.to_owned(),
        config: std::str::from_utf8(&s.config).ok().map(str::to_owned),
        config_hex: hex(&s.config),
        mask: s.mask.iter().map(mac_string).collect(),
        reserve: s.reserve.iter().map(mac_string).collect(),
    }
}

fn check_limits(s: &SavedState) -> Result<(), String> {
    if s.config.len() > MAX_CONFIG {
        return Err(format!(
            "config: {} bytes, an AoE config string has at most {MAX_CONFIG}",
            s.config.len()
        ));
    }
    for (field, list, max) in [
        ("mask", &s.mask, mask::MAX),
        ("reserve", &s.reserve, reserve::MAX),
    ] {
        if list.len() > max {
            return Err(format!(
                "{field}: {} MACs, the list holds at most {max}",
                list.len()
            ));
        }
    }
    Ok(())
}

/// The state in `text`, the file of export `export`.
fn parse(text: &str, export: &str) -> anyhow::Result<SavedState> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    // The format first: a file of another format says so rather than failing on a field.
    match value.get("format").map(|f| f.as_u64()) {
        Some(Some(f)) if f == u64::from(FORMAT) => {}
        Some(Some(f)) => {
            bail!("\"format\" {f}: this xblade reads format {FORMAT} (a newer xblade wrote it?)")
        }
        _ => bail!("no \"format\" number"),
    }
    let f: File1 = serde_json::from_value(value)?;
    if f.export != export {
        bail!(
            "\"export\": it is {:?}'s state, not {export:?}'s (set \"export\" to {export:?} to \
             give it to {export})",
            f.export
        );
    }
    let config = unhex(&f.config_hex).context("\"config_hex\"")?;
    let s = SavedState {
        config,
        mask: macs("mask", &f.mask)?,
        reserve: macs("reserve", &f.reserve)?,
    };
    check_limits(&s).map_err(|e| anyhow!(e))?;
    if let Some(text) = &f.config {
        if text.as_bytes() != s.config {
            tracing::warn!(
                "the state of export {export}: \"config\" ({text:?}) differs from \"config_hex\", \
                 which is what counts ({:?}); edit both or remove \"config\"",
                String::from_utf8_lossy(&s.config)
            );
        }
    }
    Ok(s)
}

fn macs(field: &str, list: &[String]) -> anyhow::Result<Vec<Mac>> {
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            aoe::wire::parse_mac(m).ok_or_else(|| {
                anyhow!("\"{field}\"[{i}]: {m:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")
            })
        })
        .collect()
}

/// The bytes of lower- or upper-case hex `s`.
pub(crate) fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("{} hex digits, not an even number", s.len());
    }
    if let Some(bad) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        bail!("{bad:?} is not a hex digit");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| anyhow!("{:?}: {e}", &s[i..i + 2]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn state() -> SavedState {
        SavedState {
            config: b"cluster-a".to_vec(),
            mask: vec![[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 0xab]],
            reserve: vec![[2, 0, 0, 0, 0, 1]],
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip_text_and_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(dir.load("e1.0").unwrap(), None);

        dir.save("e1.0", &state()).unwrap();
        assert_eq!(dir.load("e1.0").unwrap(), Some(state()));
        let text = fs::read_to_string(dir.path("e1.0")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "format": 1,
                "export": "e1.0",
                "config": "cluster-a",
                "config_hex": "636c75737465722d61",
                "mask": ["02:00:00:00:00:01", "02:00:00:00:00:ab"],
                "reserve": ["02:00:00:00:00:01"],
            })
        );
        assert!(text.ends_with("}\n"), "{text}");

        // Not UTF-8, NULs, the full 1024 bytes, full lists.
        let binary = SavedState {
            config: (0..MAX_CONFIG).map(|i| (i * 7 % 256) as u8).collect(),
            mask: (0..mask::MAX).map(|i| [2, 0, 0, 0, 0, i as u8]).collect(),
            reserve: (0..reserve::MAX)
                .map(|i| [2, 0, 0, 1, 0, i as u8])
                .collect(),
        };
        dir.save("e1.1", &binary).unwrap();
        assert_eq!(dir.load("e1.1").unwrap(), Some(binary));
        let text = fs::read_to_string(dir.path("e1.1")).unwrap();
        assert!(!text.contains("\"config\":"), "{text}");

        // All defaults: still a file, and it loads as such (not as None).
        dir.save("e1.2", &SavedState::default()).unwrap();
        assert!(dir.path("e1.2").exists());
        assert_eq!(dir.load("e1.2").unwrap(), Some(SavedState::default()));

        // Over an existing file: the new state, the file mode 0600, no temporary left.
        let mut changed = state();
        changed.config = b"cluster-b".to_vec();
        changed.mask.clear();
        dir.save("e1.0", &changed).unwrap();
        assert_eq!(dir.load("e1.0").unwrap(), Some(changed));
        let mode = fs::metadata(dir.path("e1.0")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(files(tmp.path()), ["e1.0.json", "e1.1.json", "e1.2.json"]);
    }

    #[test]
    fn creates_the_directory_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("var/lib/xblade");
        let dir = StateDir::open(&path).unwrap();
        assert_eq!(dir.dir(), path);
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);
        // The write test left nothing behind.
        assert_eq!(files(&path), Vec::<String>::new());
        // An existing directory is fine, and kept as it is.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o750)).unwrap();
        StateDir::open(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o750);
    }

    #[test]
    fn an_unusable_directory_is_an_error_saying_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let err = format!("{:#}", StateDir::open(&file.join("sub")).unwrap_err());
        assert!(
            err.contains(&file.join("sub").display().to_string()),
            "{err}"
        );
        assert!(err.contains("--state-dir"), "{err}");
        assert!(err.contains("StateDirectory="), "{err}");
    }

    #[test]
    fn a_bad_file_is_an_error_naming_it_and_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let path = dir.path("e1.0");
        let good = r#"{"format":1,"export":"e1.0","config_hex":"6869","mask":[],"reserve":[]}"#;
        fs::write(&path, good).unwrap();
        let loaded = dir.load("e1.0").unwrap().unwrap();
        assert_eq!(loaded.config, b"hi");

        let long_hex = "00".repeat(MAX_CONFIG + 1);
        let many = format!("{:?}", vec!["02:00:00:00:00:01"; mask::MAX + 1]);
        let cases: Vec<(String, &str)> = vec![
            (good[..good.len() / 2].to_owned(), "EOF"),
            (String::new(), "EOF"),
            ("garbage".into(), "expected value"),
            ("[]".into(), "no \"format\""),
            (good.replace("\"format\":1", "\"format\":2"), "\"format\" 2"),
            (good.replace(",\"mask\":[]", ""), "mask"),
            (good.replace("6869", "686"), "config_hex"),
            (good.replace("6869", "68zz"), "config_hex"),
            (good.replace("6869", &long_hex), "config: 1025 bytes"),
            (
                good.replace("\"mask\":[]", "\"mask\":[\"02:00:00:00:00\"]"),
                "\"mask\"[0]",
            ),
            (
                good.replace(
                    "\"reserve\":[]",
                    "\"reserve\":[\"02:00:00:00:00:01\",\"x\"]",
                ),
                "\"reserve\"[1]",
            ),
            (
                good.replace("\"mask\":[]", &format!("\"mask\":{many}")),
                "mask: 129 MACs",
            ),
            (good.replace("\"e1.0\"", "\"e1.1\""), "\"e1.1\"'s state"),
        ];
        for (text, field) in cases {
            fs::write(&path, &text).unwrap();
            let err = format!("{:#}", dir.load("e1.0").unwrap_err());
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("fix it or remove it"), "{err}");
            assert!(err.contains(field), "{field:?} not in {err} for {text}");
        }
    }

    #[test]
    fn save_refuses_what_load_would_refuse_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let too_long = SavedState {
            config: vec![b'x'; MAX_CONFIG + 1],
            ..SavedState::default()
        };
        let err = dir.save("e1.0", &too_long).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("config"), "{err}");
        let err = dir.save("../e1.0", &state()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(files(tmp.path()), Vec::<String>::new());
    }

    #[test]
    fn a_failed_save_leaves_no_temporary_and_a_crash_leftover_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        dir.save("e1.0", &state()).unwrap();
        // A directory where the file goes: the rename fails after the temporary was written.
        fs::create_dir(dir.path("e1.1")).unwrap();
        fs::write(dir.path("e1.1").join("x"), "").unwrap();
        let err = dir.save("e1.1", &state()).unwrap_err();
        assert!(err.to_string().contains("e1.1.json"), "{err}");
        assert!(!tmp.path().join("e1.1.json.tmp").exists());
        // A leftover temporary of a crash is overwritten, and ends up 0600.
        fs::write(tmp.path().join("e1.0.json.tmp"), "partial").unwrap();
        fs::set_permissions(
            tmp.path().join("e1.0.json.tmp"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        dir.save("e1.0", &SavedState::default()).unwrap();
        assert_eq!(dir.load("e1.0").unwrap(), Some(SavedState::default()));
        assert!(!tmp.path().join("e1.0.json.tmp").exists());
        assert_eq!(
            fs::metadata(dir.path("e1.0")).unwrap().mode() & 0o777,
            0o600
        );
    }
}
