//! systemd's notification protocol (`sd_notify(3)`), through the `sd-notify` crate: readiness,
//! reloading, stopping, a status line for `systemctl status`, watchdog pings.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd, or a unit
//! without `Type=notify`/`notify-reload` or `NotifyAccess=`), and none fails the daemon: a
//! message that cannot be sent is logged, as a warning, once per process. The environment is
//! left alone (no `*_and_unset_env`): the daemon starts no child that could inherit it, and
//! unsetting variables while threads run is unsound.
//!
//! `NOTIFY_SOCKET` must be a path, as systemd gives it; an abstract socket (`@name`, which
//! some container managers pass) is not supported by the crate and gets the warning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// Whether a failure to notify has been logged.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Sends `states` (one datagram) to the service manager, if there is one.
fn send(what: &str, states: &[NotifyState]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = sd_notify::notify(states) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cannot tell systemd {what} through NOTIFY_SOCKET={}: {e}; systemd may think \
                 xblade did not start (Type=notify) or hangs (WatchdogSec=): check that the \
                 unit's NotifyAccess= lets the daemon's process notify and that nothing \
                 (seccomp, a mount namespace) hides the socket; further failures are not \
                 logged",
                socket.to_string_lossy()
            );
        }
    }
}

/// A status line as one line: the protocol is newline-separated `KEY=value` assignments.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The daemon serves: `READY=1` and `STATUS=status`.
pub fn ready(status: &str) {
    let status = one_line(status);
    send(
        "it is ready",
        &[NotifyState::Ready, NotifyState::Status(&status)],
    );
}

/// A new status line for `systemctl status`: `STATUS=line`.
pub fn status(line: &str) {
    let line = one_line(line);
    send("its status", &[NotifyState::Status(&line)]);
}

/// A reload begins: `RELOADING=1` with `MONOTONIC_USEC=now`, which systemd ≥ 253 requires for
/// `Type=notify-reload` (older ones ignore it). Follow with [`reloaded`].
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("it is reloading", &[NotifyState::Reloading, now]),
        // CLOCK_MONOTONIC always reads on Linux; without it, RELOADING=1 alone still serves
        // systemd < 253.
        Err(_) => send("it is reloading", &[NotifyState::Reloading]),
    }
}

/// A reload is done: `READY=1` again, and `STATUS=status`.
pub fn reloaded(status: &str) {
    let status = one_line(status);
    send(
        "it has reloaded",
        &[NotifyState::Ready, NotifyState::Status(&status)],
    );
}

/// The daemon is shutting down: `STOPPING=1`.
pub fn stopping() {
    send("it is stopping", &[NotifyState::Stopping]);
}

/// A watchdog ping: `WATCHDOG=1`. Send one every half [`watchdog_interval`].
pub fn watchdog() {
    send("it is alive (watchdog)", &[NotifyState::Watchdog]);
}

/// The watchdog timeout systemd expects pings within (`WatchdogSec=`, passed as
/// `WATCHDOG_USEC`, for this process when `WATCHDOG_PID` is set), or `None` without one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::net::UnixDatagram;

    /// The environment variables the test changes, put back as they were when dropped (also
    /// when an assertion fails).
    struct Env(Vec<(&'static str, Option<OsString>)>);

    impl Env {
        fn save(names: &[&'static str]) -> Env {
            Env(names.iter().map(|n| (*n, std::env::var_os(n))).collect())
        }
    }

    impl Drop for Env {
        fn drop(&mut self) {
            for (name, value) in &self.0 {
                match value {
                    Some(v) => std::env::set_var(name, v),
                    None => std::env::remove_var(name),
                }
            }
        }
    }

    fn monotonic_usec() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(rc, 0);
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
    }

    /// The one datagram waiting on `sock`, as text.
    fn received(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn nothing_waiting(sock: &UnixDatagram) {
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let got = sock.recv(&mut buf);
        assert!(
            got.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "unexpected datagram: {:?}",
            got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        );
        sock.set_nonblocking(false).unwrap();
    }

    /// One test for the whole module: the tests of a binary share the environment, and
    /// NOTIFY_SOCKET is process-wide.
    #[test]
    fn notifications_reach_the_socket_exactly() {
        let _env = Env::save(&["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        // Without NOTIFY_SOCKET: nothing sent, nothing fails.
        std::env::remove_var("NOTIFY_SOCKET");
        ready("serving");
        status("x");
        reloading();
        reloaded("x");
        stopping();
        watchdog();
        nothing_waiting(&sock);

        std::env::set_var("NOTIFY_SOCKET", &path);
        ready("serving 2 exports on eth1");
        assert_eq!(
            received(&sock),
            "READY=1\nSTATUS=serving 2 exports on eth1\n"
        );
        status("3 initiators\nSTOPPING=1");
        assert_eq!(received(&sock), "STATUS=3 initiators STOPPING=1\n");

        let before = monotonic_usec();
        reloading();
        let after = monotonic_usec();
        let msg = received(&sock);
        let usec = msg
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("{msg:?}"));
        let usec: u64 = usec.parse().unwrap();
        assert!(
            (before..=after).contains(&usec),
            "{before} ≤ {usec} ≤ {after}"
        );

        reloaded("serving 3 exports");
        assert_eq!(received(&sock), "READY=1\nSTATUS=serving 3 exports\n");
        watchdog();
        assert_eq!(received(&sock), "WATCHDOG=1\n");
        stopping();
        assert_eq!(received(&sock), "STOPPING=1\n");
        nothing_waiting(&sock);

        // The watchdog interval, for this process only.
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), None);
        std::env::set_var("WATCHDOG_USEC", "5000000");
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(5)));
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(5)));
        std::env::set_var("WATCHDOG_PID", (std::process::id() + 1).to_string());
        assert_eq!(watchdog_interval(), None);

        // A socket nobody listens on: a warning once, and the daemon goes on.
        std::env::set_var("NOTIFY_SOCKET", dir.path().join("gone"));
        assert!(!WARNED.load(Ordering::Relaxed));
        ready("serving");
        assert!(WARNED.load(Ordering::Relaxed));
        watchdog();
        stopping();
    }
}
