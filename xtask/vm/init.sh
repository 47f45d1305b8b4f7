#!/bin/busybox sh
# /init of the `cargo xtask vm-test` guest (built by xtask/src/vm/guest.rs).
#
# Runs ONE test, named by `xbvm.test=` on the kernel command line, against the AoE device
# e<xbvm.shelf>.<xbvm.slot> exported by the target on the host end of the tap, then powers off.
# It talks to the host only through console lines that start with `XBLADE-VM: `:
#
#   BOOTED <uptime_cs>                      init started
#   READY <uptime_cs> sectors=N frame_bytes=N   the device is there and has the expected size
#   INFO <what> key=value ...               measurements (throughput, passes)
#   LOAD-STARTED / LOAD-DONE passes=N       restart test: the host kills and restarts the
#                                           target between these two
#   PASS <test> | FAIL <test> <reason>      the verdict (the host adds its own checks)
#   END                                     about to power off
#
# Times are centiseconds of /proc/uptime. The files the host put in the initramfs:
#   /pattern.bin            random bytes (a whole number of MiB), written to the device
#   /lib/modules/*.ko       modules, loaded in the order of /lib/modules/load-order, then aoe.ko
#   /opt/e2fsprogs/         the host's mke2fs and e2fsck, with their shared libraries

/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /etc
/bin/busybox --install -s /bin
export PATH=/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ln -sf /proc/mounts /etc/mtab

TEST=none SHELF=1 SLOT=0 SECTORS=0 MTU=1500 LOAD_SECS=12 STALL_SECS=30
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        xbvm.test=*) TEST=${arg#*=} ;;
        xbvm.shelf=*) SHELF=${arg#*=} ;;
        xbvm.slot=*) SLOT=${arg#*=} ;;
        xbvm.sectors=*) SECTORS=${arg#*=} ;;
        xbvm.mtu=*) MTU=${arg#*=} ;;
        xbvm.load_secs=*) LOAD_SECS=${arg#*=} ;;
        xbvm.stall_secs=*) STALL_SECS=${arg#*=} ;;
    esac
done

say() { echo "XBLADE-VM: $*"; }

# Centiseconds since boot ("12.34" -> 1234; the "1" prefix keeps "05" from reading as octal).
now_cs() {
    read -r up _ < /proc/uptime
    echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

finish() {
    # Keep the initiator's view of things in the console log.
    dmesg | grep -iE 'aoe|etherd|error|fail|ext4' | tail -n 40 | sed 's/^/dmesg: /'
    say "END $(now_cs)"
    sync
    poweroff -f
    sleep 10
}

fail() {
    say "FAIL $TEST $*"
    finish
}

say "BOOTED $(now_cs)"

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done < /lib/modules/load-order

i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ $i -gt 50 ] && fail "no eth0"
    sleep 0.1
done
ip link set lo up
ip link set eth0 mtu "$MTU" || fail "cannot set the eth0 MTU to $MTU"
ip link set eth0 up || fail "eth0 up"

insmod /lib/modules/aoe.ko aoe_iflist=eth0 || fail "insmod aoe"

DEV=/dev/etherd/e$SHELF.$SLOT
SYS="/sys/block/etherd!e$SHELF.$SLOT"
# aoe broadcasts a config query at load and then only every 60 s: poke it while we wait, in
# case the target was not listening yet.
i=0
while [ ! -b "$DEV" ] || [ ! -e "$SYS/size" ]; do
    i=$((i + 1))
    [ $i -gt 300 ] && fail "no $DEV after 30 s"
    [ $((i % 10)) -eq 0 ] && [ -c /dev/etherd/discover ] && echo > /dev/etherd/discover
    sleep 0.1
done
# The size appears before IDENTIFY has set it on a slow start; give it a moment.
i=0
while [ "$(cat "$SYS/size")" = 0 ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
size=$(cat "$SYS/size")
frames=$(dmesg | sed -n 's/.*setting \([0-9]*\) byte data frames.*/\1/p' | tail -n 1)
say "READY $(now_cs) sectors=$size frame_bytes=${frames:-unknown}"
[ "$size" = "$SECTORS" ] || fail "capacity: $SYS/size is $size sectors, expected $SECTORS"

# Stall watchdog: I/O in flight on the device and none completed for STALL_SECS means the
# initiator (or the target) is stuck. Dump what the kernel knows and fail now, rather than
# waiting for the host's timeout or for aoe_deadsecs (180 s).
diagnose() {
    say "DIAG stat: $(cat "$SYS/stat")"
    say "DIAG inflight: $(cat "$SYS/inflight")"
    mount -t debugfs debugfs /sys/kernel/debug 2> /dev/null
    for f in /sys/kernel/debug/aoe/*; do
        [ -e "$f" ] && sed "s|^|XBLADE-VM: DIAG ${f##*/}: |" "$f"
    done
    for pid in $(pidof dd cmp sync mke2fs e2fsck cp); do
        sed "s|^|XBLADE-VM: DIAG stack $pid $(cat /proc/$pid/comm): |" /proc/$pid/stack 2> /dev/null
    done
    echo w > /proc/sysrq-trigger
    dmesg | tail -n 60 | sed 's/^/XBLADE-VM: DIAG dmesg: /'
}
watchdog() {
    local last="" same=0 now
    while sleep 5; do
        # Completed reads and writes (fields 1 and 5); the tick counters move while stuck.
        set -- $(cat "$SYS/stat")
        now="$1 $5"
        set -- $(cat "$SYS/inflight")
        if [ "$now" = "$last" ] && [ $(($1 + $2)) -gt 0 ]; then
            same=$((same + 5))
        else
            same=0
        fi
        last=$now
        if [ $same -ge "$STALL_SECS" ]; then
            say "STALL no I/O completed for ${same}s with $1 reads and $2 writes in flight"
            diagnose
            fail "stalled: no I/O completed for ${same}s with I/O in flight"
        fi
    done
}
watchdog &

PATTERN=/pattern.bin
PMIB=$(( $(wc -c < $PATTERN) / 1048576 ))
DEV_MIB=$(( SECTORS / 2048 ))

# dd_timed WHAT dd-args...: run dd, print "INFO WHAT bytes=N cs=N", fail on error.
dd_timed() {
    local what=$1 start end records
    shift
    start=$(now_cs)
    dd "$@" 2> /tmp/dd.err || fail "$what: dd $*: $(cat /tmp/dd.err)"
    end=$(now_cs)
    records=$(sed -n 's/^\([0-9]*\)+0 records out$/\1/p' /tmp/dd.err)
    say "INFO $what bytes=$((records * 1048576)) cs=$((end - start))"
}

# same_as_pattern FILE MIB: FILE equals the first MIB MiB of the pattern.
same_as_pattern() {
    if [ "$2" = "$PMIB" ]; then
        cmp "$1" $PATTERN
    else
        dd if=$PATTERN of=/tmp/expect bs=1M count="$2" 2> /dev/null && cmp "$1" /tmp/expect
    fi
}

drop_caches() {
    sync
    blockdev --flushbufs "$DEV"
    echo 3 > /proc/sys/vm/drop_caches
}

test_io() {
    # O_DIRECT write of the pattern at LBA 0, O_DIRECT read back, compare in the guest; the
    # host then compares the backing file. The last MiB of the device gets the pattern's
    # first MiB, to reach the highest LBAs.
    dd_timed write if=$PATTERN of="$DEV" bs=1M count=$PMIB oflag=direct
    drop_caches
    dd_timed read if="$DEV" of=/tmp/readback bs=1M count=$PMIB iflag=direct
    same_as_pattern /tmp/readback $PMIB || fail "read-back differs from the pattern"
    rm -f /tmp/readback
    dd if=$PATTERN of="$DEV" bs=1M count=1 seek=$((DEV_MIB - 1)) oflag=direct 2> /tmp/dd.err \
        || fail "write of the last MiB: $(cat /tmp/dd.err)"
    drop_caches
    dd if="$DEV" of=/tmp/readback bs=1M count=1 skip=$((DEV_MIB - 1)) iflag=direct 2> /tmp/dd.err \
        || fail "read of the last MiB: $(cat /tmp/dd.err)"
    same_as_pattern /tmp/readback 1 || fail "the last MiB read back differs"
    rm -f /tmp/readback /tmp/expect
    # A buffered read of everything, through the page cache (large requests).
    drop_caches
    dd_timed buffered-read if="$DEV" of=/dev/null bs=1M
}

test_fs() {
    MKFS=/opt/e2fsprogs/mke2fs
    FSCK=/opt/e2fsprogs/e2fsck
    t0=$(now_cs)
    $MKFS -t ext4 -F -q -L xbvm "$DEV" > /tmp/mkfs.log 2>&1 || fail "mkfs.ext4: $(cat /tmp/mkfs.log)"
    say "INFO mkfs cs=$(( $(now_cs) - t0 ))"
    mount -t ext4 "$DEV" /mnt || fail "mount"
    t0=$(now_cs)
    cp $PATTERN /mnt/big.bin || fail "cp big.bin"
    mkdir -p /mnt/small/a /mnt/small/b || fail "mkdir"
    i=0
    while [ $i -lt 64 ]; do
        d=a
        [ $((i % 2)) -eq 1 ] && d=b
        dd if=$PATTERN bs=4096 skip=$i count=3 2> /dev/null | head -c $((i * 97 + 1)) > /mnt/small/$d/f$i \
            || fail "writing small file $i"
        i=$((i + 1))
    done
    ln -s big.bin /mnt/link
    (cd /mnt && find . -type f | sort | xargs sha256sum) > /tmp/sums || fail "sha256sum"
    sync
    say "INFO fs-write bytes=$((PMIB * 1048576)) cs=$(( $(now_cs) - t0 ))"
    umount /mnt || fail "umount"
    drop_caches
    $FSCK -fn "$DEV" > /tmp/fsck.log 2>&1 || { sed 's/^/fsck: /' /tmp/fsck.log; fail "e2fsck -fn is not clean"; }
    mount -t ext4 -o ro "$DEV" /mnt || fail "remount"
    (cd /mnt && sha256sum -c /tmp/sums) > /tmp/check.log 2>&1 || { grep -v ': OK$' /tmp/check.log; fail "checksums differ after remount"; }
    [ "$(readlink /mnt/link)" = big.bin ] || fail "symlink lost"
    say "INFO fs-files count=$(wc -l < /tmp/sums)"
    umount /mnt || fail "umount after check"
}

test_restart() {
    # Write the pattern over and over, alternating between [0, P) and [P, 2P) MiB, for at
    # least LOAD_SECS seconds and two passes. The host kills -9 and restarts the target in
    # the meantime; every write must still succeed (the initiator retransmits).
    [ $((2 * PMIB)) -le $DEV_MIB ] || fail "the device is too small for two copies of the pattern"
    say "LOAD-STARTED $(now_cs)"
    load_start=$(now_cs)
    pass=0
    while :; do
        off=$(( (pass % 2) * PMIB ))
        dd_timed "restart-pass-$pass" if=$PATTERN of="$DEV" bs=1M count=$PMIB seek=$off oflag=direct
        pass=$((pass + 1))
        [ $pass -ge 2 ] && [ $(( $(now_cs) - load_start )) -ge $((LOAD_SECS * 100)) ] && break
    done
    say "LOAD-DONE passes=$pass"
    drop_caches
    dd if="$DEV" of=/tmp/readback bs=1M count=$PMIB iflag=direct 2> /tmp/dd.err || fail "read back 1: $(cat /tmp/dd.err)"
    same_as_pattern /tmp/readback $PMIB || fail "copy 1 differs after the restart"
    dd if="$DEV" of=/tmp/readback bs=1M count=$PMIB skip=$PMIB iflag=direct 2> /tmp/dd.err || fail "read back 2: $(cat /tmp/dd.err)"
    same_as_pattern /tmp/readback $PMIB || fail "copy 2 differs after the restart"
    rm -f /tmp/readback
}

case "$TEST" in
    io) test_io ;;
    fs) test_fs ;;
    restart) test_restart ;;
    *) fail "unknown test '$TEST'" ;;
esac
say "PASS $TEST"
finish
