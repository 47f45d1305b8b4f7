#!/usr/bin/env bash
# install-test.sh: installs the xblade Debian package on this machine, checks what it put
# there, purges it, and checks that nothing is left behind.
#
#   deploy/debian/install-test.sh [--yes] target/debian/xblade_VERSION_amd64.deb
#
# It installs into / as root (dpkg -i, then apt-get install -f if dependencies are missing),
# so it is a CI test: it refuses to run unless CI=true or --yes is given. It also refuses to
# touch a machine where xblade is already installed or running, or where a source install left
# /etc/xblade/xblade.toml or an xblade user (a purge would delete them); a /var/lib/xblade or
# /run/xblade that an xblade run as root left behind is moved aside and put back afterwards.
# Each command it runs is printed with "+ ". It may install man-db (to render the man page)
# and says so. systemd need not be running: without it the units are read with
# systemd-analyze and systemctl --root=/ instead of systemctl cat.
#
# Checks after install: xblade --version and aoe-bench --version run; man xblade and
# man aoe-bench render; both units are there (systemctl cat, or systemd-analyze cat-config),
# pass systemd-analyze verify, rate at most 2.0 on systemd-analyze security, and are not
# enabled or started; the xblade user (group xblade, supplementary group disk, no home,
# nologin) and /var/lib/xblade exist; /etc/xblade/xblade.toml is a conffile, and a reinstall
# (the upgrade path) keeps an edit to it; completions and the copyright file are in place.
# (Without systemd as PID 1 the maintainer scripts' systemctl branches do not run: the
# daemon-reload, the restart on upgrade and the stop on removal.) After dpkg --purge: no file of the package, no unit, no
# /etc/xblade, /var/lib/xblade or /run/xblade, no xblade process, no xblade user or group.
set -euo pipefail

usage() {
    echo "usage: $0 [--yes] PATH.deb" >&2
    exit 2
}

yes=false
deb=""
while [ $# -gt 0 ]; do
    case $1 in
    --yes) yes=true ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    -*) usage ;;
    *)
        [ -z "$deb" ] || usage
        deb=$1
        ;;
    esac
    shift
done
[ -n "$deb" ] || usage

fail() {
    echo "install-test: FAIL: $*" >&2
    exit 1
}
step() { echo "==> $*"; }
# PIDs of processes running the packaged binary (also once it is deleted), or as user xblade.
packaged_xblade() {
    local exe pid
    for exe in /proc/[0-9]*/exe; do
        pid=${exe#/proc/}
        pid=${pid%/exe}
        case $(readlink "$exe" 2>/dev/null || true) in
        /usr/sbin/xblade | "/usr/sbin/xblade (deleted)") echo "$pid" ;;
        esac
    done
    if getent passwd xblade >/dev/null; then
        pgrep -u xblade || true
    fi
}

# Prints the command (on stderr, as set -x does, so that pipes see only its output) and runs it.
run() {
    echo "+ $*" >&2
    "$@"
}

if [ "${CI:-}" != "true" ] && ! $yes; then
    echo "install-test: this installs $deb into / and purges it again (dpkg -i, dpkg --purge)." >&2
    echo "install-test: run it in CI (CI=true) or on a throwaway machine with --yes." >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || fail "run as root (it installs a package)"
[ -f "$deb" ] || fail "$deb: no such file"
deb=$(readlink -f "$deb")
pkg=$(dpkg-deb -f "$deb" Package)
[ "$pkg" = xblade ] || fail "$deb is package $pkg, not xblade"

step "Refusing to touch an existing xblade"
if dpkg-query -W -f='${Status}' xblade 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "xblade is already installed here (dpkg -l xblade); this test would purge it"
fi
[ ! -e /etc/xblade/xblade.toml ] ||
    fail "/etc/xblade/xblade.toml exists (a source install?); the purge would delete it"
if getent passwd xblade >/dev/null || getent group xblade >/dev/null; then
    fail "an xblade user or group exists already; the purge would delete it"
fi
if [ -n "$(packaged_xblade)" ]; then
    fail "/usr/sbin/xblade is running here: $(packaged_xblade)"
fi

# The package creates /var/lib/xblade and its purge deletes it (and /run/xblade). An xblade
# run as root with its default directories (an earlier test, say) leaves them behind: they are
# moved aside for the test and put back at the end, unless an xblade is still using them.
saved=()
for dir in /var/lib/xblade /run/xblade; do
    [ -e "$dir" ] || continue
    [ ! -e "$dir.install-test-saved" ] || fail "$dir.install-test-saved exists (from an earlier run?)"
    if pgrep -x xblade >/dev/null; then
        fail "$dir exists and xblade is running (pid $(pgrep -x xblade | tr '\n' ' ')): stop it first"
    fi
    echo "$dir exists, with no xblade package: moving it aside for the test"
    run mv "$dir" "$dir.install-test-saved"
    saved+=("$dir")
done
restore() {
    local dir
    for dir in "${saved[@]}"; do
        rm -rf "$dir"
        run mv "$dir.install-test-saved" "$dir"
    done
    saved=()
}

installed=false
cleanup() {
    if $installed; then
        echo "install-test: purging xblade after a failure" >&2
        dpkg --purge xblade >/dev/null 2>&1 || true
    fi
    restore
}
trap cleanup EXIT

# Docker-style images exclude man pages from every package; let this one's in.
dpkg_opts=()
if grep -qs '^path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg /etc/dpkg/dpkg.cfg.d/*; then
    echo "dpkg is configured to drop man pages (path-exclude); including xblade's"
    dpkg_opts+=("--path-include=/usr/share/man/man[18]/xblade*" "--path-include=/usr/share/man/man1/aoe-bench*")
fi

step "Installing $deb"
export DEBIAN_FRONTEND=noninteractive
installed=true
if ! run dpkg -i "${dpkg_opts[@]}" "$deb"; then
    echo "dpkg -i left dependencies to install; installing them with apt-get"
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        run apt-get update -qq
    fi
    run apt-get install -f -y -qq
fi
[ "$(dpkg-query -W -f='${Status}' xblade)" = "install ok installed" ] ||
    fail "xblade is not installed: $(dpkg-query -W -f='${Status}' xblade)"
mapfile -t files < <(dpkg -L xblade)

step "The programs"
run /usr/sbin/xblade --version
/usr/sbin/xblade --version | grep -q '^xblade [0-9]' || fail "xblade --version"
command -v xblade >/dev/null || fail "xblade is not on PATH"
run /usr/bin/aoe-bench --version
/usr/bin/aoe-bench --version | grep -q '^aoe-bench [0-9]' || fail "aoe-bench --version"

step "The manual pages"
if ! command -v man >/dev/null; then
    echo "man is not installed: installing man-db to render the pages"
    run apt-get install -y -qq man-db
fi
for page in 8:xblade 1:aoe-bench; do
    section=${page%%:*} name=${page#*:}
    # Not 80 columns: man-db would show a formatted page it cached at that width, which the
    # package's fixed file times make look current even when it is from another build.
    echo "+ man $section $name" >&2
    text=$(MANWIDTH=100 man "$section" "$name" 2>&1) || fail "man $name: $text"
    if ! grep -q NAME <<<"$text" || ! grep -q "$name" <<<"$text"; then
        fail "man $name rendered: $text"
    fi
    echo "$text" | head -n 5
done
run bash -c "ls /usr/share/man/man8/xblade*.8.gz /usr/share/man/man1/aoe-bench*.1.gz | wc -l"

step "The systemd units"
for unit in xblade.service xblade@.service; do
    [ -f "/lib/systemd/system/$unit" ] || fail "/lib/systemd/system/$unit missing"
    if [ -d /run/systemd/system ]; then
        text=$(run systemctl cat "$unit")
        grep -q '^ExecStart=/usr/sbin/xblade' <<<"$text" || fail "$unit: no ExecStart=/usr/sbin/xblade: $text"
    else
        # systemd is not PID 1 (a container): systemctl cat needs the manager, cat-config
        # reads the same unit and drop-ins from disk.
        text=$(run systemd-analyze cat-config "systemd/system/$unit")
        grep -q '^ExecStart=/usr/sbin/xblade' <<<"$text" || fail "$unit: no ExecStart=/usr/sbin/xblade: $text"
    fi
done
run systemctl --root=/ list-unit-files 'xblade*'
state=$(systemctl --root=/ is-enabled xblade.service 2>/dev/null || true)
[ "$state" = disabled ] || fail "xblade.service is '$state' after install (it must not be enabled)"
run systemd-analyze verify /lib/systemd/system/xblade.service /lib/systemd/system/xblade@check.service
for unit in xblade.service xblade@.service; do
    text=$(run systemd-analyze security --offline=yes --threshold=20 --no-pager "/lib/systemd/system/$unit") ||
        fail "$unit: systemd-analyze security: $(grep -E '^(✗|→)' <<<"$text")"
    grep 'Overall exposure level' <<<"$text"
done
if [ -n "$(packaged_xblade)" ]; then
    fail "xblade was started by the install (it must wait for its configuration)"
fi

step "The user, its state directory, the configuration"
run getent passwd xblade
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd xblade)
[ "$uid" -lt 1000 ] || fail "xblade is not a system user (uid $uid)"
[ "$(getent group "$gid" | cut -d: -f1)" = xblade ] || fail "xblade's primary group is not xblade"
if [ "$home" != /nonexistent ] || [ -e "$home" ]; then
    fail "xblade has a home: $home"
fi
case $shell in */nologin | /bin/false) ;; *) fail "xblade can log in: $shell" ;; esac
run id xblade
id -nG xblade | tr ' ' '\n' | grep -qx disk || fail "xblade is not in group disk"
run stat -c '%U:%G %a %n' /var/lib/xblade
[ "$(stat -c '%U:%G %a' /var/lib/xblade)" = "xblade:xblade 750" ] || fail "/var/lib/xblade owner or mode"
run dpkg-query -W -f='${Conffiles}\n' xblade
dpkg-query -W -f='${Conffiles}\n' xblade | grep -q '^ /etc/xblade/xblade.toml ' ||
    fail "/etc/xblade/xblade.toml is not a conffile"
[ -f /etc/xblade/xblade.toml ] || fail "/etc/xblade/xblade.toml missing"

step "Completions and the copyright file"
for f in /usr/share/bash-completion/completions/xblade /usr/share/bash-completion/completions/aoe-bench \
    /usr/share/zsh/vendor-completions/_xblade /usr/share/zsh/vendor-completions/_aoe-bench \
    /usr/share/fish/vendor_completions.d/xblade.fish /usr/share/fish/vendor_completions.d/aoe-bench.fish; do
    [ -s "$f" ] || fail "$f missing or empty"
done
run bash -c 'source /usr/share/bash-completion/completions/xblade && complete -p xblade'
copyright=/usr/share/doc/xblade/copyright
grep -q '^Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' "$copyright" ||
    fail "$copyright is not machine-readable"
grep -q '^License: MIT or Apache-2.0' "$copyright" || fail "$copyright: no MIT or Apache-2.0"

step "Reinstalling over it (the upgrade path): the admin's configuration stays"
echo "# edited by install-test" >>/etc/xblade/xblade.toml
run dpkg -i --force-confold "${dpkg_opts[@]}" "$deb"
grep -q '^# edited by install-test' /etc/xblade/xblade.toml || fail "the upgrade replaced the edited conffile"
if ! getent passwd xblade >/dev/null || [ ! -d /var/lib/xblade ]; then
    fail "the upgrade lost the user or /var/lib/xblade"
fi

step "Purging"
run dpkg --purge xblade
installed=false

step "Nothing is left behind"
for f in "${files[@]}"; do
    # Directories the package shares with others (/usr/share/man/man8 ...) stay.
    if [ -e "$f" ] && [ ! -d "$f" ]; then
        fail "$f is still there"
    fi
done
for left in /etc/xblade /var/lib/xblade /var/lib/private/xblade /run/xblade /usr/share/xblade \
    /usr/share/doc/xblade; do
    [ ! -e "$left" ] || fail "$left is still there"
done
units=$(find /etc/systemd /lib/systemd /usr/lib/systemd /run/systemd -name 'xblade*' 2>/dev/null || true)
[ -z "$units" ] || fail "units or links left: $units"
[ -z "$(packaged_xblade)" ] || fail "an xblade process is still running: $(packaged_xblade)"
! getent passwd xblade >/dev/null || fail "the xblade user is still there"
! getent group xblade >/dev/null || fail "the xblade group is still there"
! grep -qw xblade /etc/group || fail "xblade is still a member of a group: $(grep -w xblade /etc/group)"
[ -z "$(dpkg-query -W -f='${Status}' xblade 2>/dev/null || true)" ] ||
    dpkg-query -W -f='${Status}' xblade | grep -q 'not-installed' ||
    fail "dpkg still knows xblade: $(dpkg-query -W -f='${Status}' xblade)"

restore
echo "install-test: OK: $deb installs, works as packaged, and purges clean"
