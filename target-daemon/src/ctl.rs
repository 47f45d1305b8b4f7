//! The control socket: a Unix stream socket (mode 0600) taking one JSON request per
//! connection, one line, and answering one JSON line. `xblade status|stat|add|remove|reload|
//! mask|reserve|config-string` are its clients.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::status::Status;

/// The directory of the default control sockets.
pub const RUN_DIR: &str = "/run/xblade";

/// The default control socket of `xblade serve`.
pub fn default_serve_path() -> PathBuf {
    Path::new(RUN_DIR).join("control.sock")
}

/// The default control socket of the vblade-style form on `iface`.
pub fn default_iface_path(iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{iface}.sock"))
}

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Everything `xblade status` shows.
    Status,
    /// Add an export.
    Add {
        /// Its configuration, as in the TOML file.
        export: config::Export,
    },
    /// Remove an export (`eS.L`).
    Remove {
        /// `eS.L`.
        name: String,
    },
    /// Re-read the configuration file and apply the difference.
    Reload,
    /// Edit an export's MAC mask list.
    Mask {
        /// `eS.L`.
        name: String,
        /// MACs to add.
        add: Vec<String>,
        /// MACs to remove.
        remove: Vec<String>,
        /// Empty the list first.
        clear: bool,
    },
    /// Clear an export's reserve list.
    Reserve {
        /// `eS.L`.
        name: String,
        /// Empty the list.
        clear: bool,
    },
    /// Set or clear an export's config string.
    ConfigString {
        /// `eS.L`.
        name: String,
        /// The new string.
        set: Option<String>,
        /// Empty it.
        clear: bool,
    },
}

/// An answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What happened, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why not, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The status (for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}

impl Response {
    /// A success with a message.
    pub fn done(message: String) -> Response {
        Response {
            ok: true,
            message: Some(message),
            ..Response::default()
        }
    }

    /// A failure.
    pub fn failed(e: &anyhow::Error) -> Response {
        Response {
            ok: false,
            error: Some(format!("{e:#}")),
            ..Response::default()
        }
    }
}

/// Bind the control socket at `path` (mode 0600; its directory is created if missing). A
/// socket file nobody answers on is replaced; one a live daemon answers on is refused.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating the control socket's directory {} (choose another with \
                     --control PATH, or [daemon] control = PATH)",
                    dir.display()
                )
            })?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another xblade answers on the control socket {}: run one xblade per \
                 control socket (stop it, or give this one --control PATH)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| {
        format!(
            "binding the control socket {} (choose another with --control PATH)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the control socket {} mode 0600", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serve one connection: read a request line, answer with `handle`'s response. A connection
/// closed without a request (another daemon checking whether this socket is alive) gets
/// nothing: returns false.
pub fn serve_one(stream: UnixStream, handle: &dyn Fn(Request) -> Response) -> Result<bool> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(1 << 20)
        .read_line(&mut line)?;
    if line.is_empty() {
        return Ok(false);
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(r) => handle(r),
        Err(e) => Response::failed(&anyhow!(
            "not a request this xblade understands ({e}): are client and daemon the same version?"
        )),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    Ok(true)
}

/// Send `req` to the daemon at `path` and return its answer.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let stream = UnixStream::connect(path).map_err(|e| {
        anyhow!(
            "cannot reach xblade's control socket {}: {e} (is xblade running? Is this the \
             socket it was given with --control? Reading it needs the daemon's user or root)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(64 << 20)
        .read_line(&mut answer)
        .with_context(|| format!("reading xblade's answer on {}", path.display()))?;
    serde_json::from_str(&answer).with_context(|| {
        format!(
            "xblade's answer on {} is not one this client understands (a different version?)",
            path.display()
        )
    })
}

/// The control sockets in [`RUN_DIR`], sorted.
pub fn sockets_in_run_dir() -> Result<Vec<PathBuf>> {
    let dir = Path::new(RUN_DIR);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no xblade is running here: {RUN_DIR} does not exist (or pass --control PATH)")
        }
        Err(e) => bail!("cannot list {RUN_DIR}: {e} (run as root, or pass --control PATH)"),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    out.sort();
    if out.is_empty() {
        bail!("no xblade control socket in {RUN_DIR}: is xblade running? (or pass --control PATH)");
    }
    Ok(out)
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json_lines() {
        let r = Request::Mask {
            name: "e1.0".into(),
            add: vec!["02:00:00:00:00:01".into()],
            remove: vec![],
            clear: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"cmd\":\"mask\""), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let s = serde_json::to_string(&Request::ConfigString {
            name: "e1.0".into(),
            set: Some("x".into()),
            clear: false,
        })
        .unwrap();
        assert!(s.contains("config-string"), "{s}");
    }

    #[test]
    fn serves_a_request_over_a_socket_and_refuses_a_second_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.sock");
        let l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another xblade"), "{err}");
        let t = std::thread::spawn(move || {
            l.set_nonblocking(false).unwrap();
            // The first connection is the second bind's probe: no request.
            let mut served = Vec::new();
            while served.len() < 2 {
                let (s, _) = l.accept().unwrap();
                served.push(
                    serve_one(s, &|r| match r {
                        Request::Remove { name } => Response::done(format!("{name} removed")),
                        _ => Response::failed(&anyhow!("no")),
                    })
                    .unwrap(),
                );
            }
            assert_eq!(served, [false, true]);
        });
        let r = call(
            &path,
            &Request::Remove {
                name: "e1.1".into(),
            },
            Duration::from_secs(5),
        )
        .unwrap();
        t.join().unwrap();
        assert!(r.ok);
        assert_eq!(r.message.as_deref(), Some("e1.1 removed"));
        drop(dir);
        let err = call(&path, &Request::Status, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is xblade running"), "{err}");
    }
}
