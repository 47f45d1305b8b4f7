//! Privileged storage tests: real files, real loop devices, real io_uring.
//!
//! Data moves between a registered mmap'd region (standing in for the UMEM)
//! and the store, and every result is checked twice: through io_uring, and
//! through a plain buffered `pread` of the store (a pair assertion).
//!
//! Loop-device tests need root. Without it they print `SKIPPED (needs root)`
//! to stderr and pass, unless `CI=true`, where they fail instead.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use xblade::backing::{Backing, BackingConfig, BackingError, BackingKind, Commit, IoMode};
use xblade::uring::{Completion, Uring, UringConfig};

const MIB: usize = 1 << 20;

/// An anonymous, page-aligned mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Mapping {
        Mapping::with_flags(len, 0)
    }

    fn with_flags(len: usize, extra: libc::c_int) -> Mapping {
        // SAFETY: an anonymous private mapping at a kernel-chosen address
        // touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap {len}: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }

    fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len);
        // SAFETY: in bounds of the mapping (asserted).
        unsafe { self.ptr.add(offset) }
    }

    /// Only while no I/O is in flight on this range.
    fn slice_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len);
        // SAFETY: in bounds of the live mapping, and `&mut self` makes this
        // the only reference; the tests call it only with no I/O in flight.
        unsafe { std::slice::from_raw_parts_mut(self.at(offset), len) }
    }

    fn region(&self) -> (*mut u8, usize) {
        (self.ptr, self.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; every Uring using it
        // is dropped first (declared after it in each test).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A loop device over a file, detached on drop (also while unwinding).
struct LoopDev {
    dev: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl LoopDev {
    fn new(bytes: u64, sector_size: u32) -> LoopDev {
        let file = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        file.as_file().set_len(bytes).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on", "--sector-size"])
            .arg(sector_size.to_string())
            .arg(file.path())
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = LoopDev {
            dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
            _file: file,
        };
        // The guard exists before anything can panic, so the device is detached.
        assert!(
            dev.dev.to_string_lossy().starts_with("/dev/loop"),
            "{:?}",
            dev.dev
        );
        dev
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let status = Command::new("losetup").arg("-d").arg(&self.dev).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: losetup -d {} failed: {status:?}",
                self.dev.display()
            );
        }
    }
}

fn fs_type(path: &Path) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(path)
        .output()
        .unwrap();
    // A path mounted over twice lists both; the last is the one in effect.
    let out = String::from_utf8_lossy(&out.stdout);
    out.lines().last().unwrap_or("").trim().to_owned()
}

fn describe(label: &str, b: &Backing) {
    eprintln!(
        "{label}: kind={:?} size={} sectors={} lbs={} dio_mem_align={} dio_offset_align={} \
         (statx STATX_DIOALIGN reported: {}) mode={:?}",
        b.kind(),
        b.size_bytes(),
        b.sectors(),
        b.logical_block_size(),
        b.dio_mem_align(),
        b.dio_offset_align(),
        b.dio_align_reported(),
        b.io_mode()
    );
}

/// Wait for exactly `n` completions.
fn wait_all(ring: &mut Uring, n: usize) -> Vec<Completion> {
    let mut out = Vec::with_capacity(n);
    ring.submit().unwrap();
    while out.len() < n {
        ring.submit_and_wait(n - out.len()).unwrap();
        ring.reap(&mut out, usize::MAX);
    }
    assert_eq!(out.len(), n);
    assert_eq!(ring.in_flight(), 0);
    out.sort_by_key(|c| c.user_data);
    out
}

fn pattern(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// The unit every I/O in the exercise uses: a multiple of everything.
fn io_unit(b: &Backing) -> usize {
    let unit = b
        .dio_offset_align()
        .max(b.dio_mem_align())
        .max(b.logical_block_size())
        .max(4096);
    unit as usize
}

/// Write patterns at several export offsets with `WRITE_FIXED | RWF_DSYNC`,
/// read them back with `READ_FIXED` (and once with a plain `READ` into
/// unregistered memory), compare, and check the store with `pread`.
fn exercise(b: &Backing) {
    const HALF: usize = 512 * 1024;
    let mut umem = Mapping::new(2 * HALF);
    let mut outside = Mapping::new(64 * 1024);
    let mut ring = Uring::new(32, &[b.fd()], &[umem.region()]).unwrap();
    assert_eq!(ring.registered_files(), 1);
    assert_eq!(ring.registered_buffers(), 1);
    assert!(!ring.is_registered(outside.at(0), 4096));

    let unit = io_unit(b);
    let export_bytes = b.sectors() * 512;
    let len = 2 * unit;
    assert!(
        export_bytes >= 16 * len as u64,
        "export too small for the test"
    );
    let offsets = [
        0,
        3 * unit as u64,
        64 * 1024,
        export_bytes - 2 * len as u64,
        export_bytes - len as u64, // the last bytes of the export
    ];

    // Writes from the first half of the region, one slot of `len` each.
    for (i, &off) in offsets.iter().enumerate() {
        pattern(off + 1, umem.slice_mut(i * len, len));
        assert!(b.check_aligned(off, len as u64, umem.at(i * len) as usize));
    }
    for (i, &off) in offsets.iter().enumerate() {
        let ptr = umem.at(i * len);
        assert!(ring.is_registered(ptr, len));
        // SAFETY: the slot stays mapped and untouched until wait_all reaps.
        unsafe {
            ring.push_write(0, ptr, len as u32, b.byte_offset() + off, i as u64, true)
                .unwrap();
        }
    }
    for c in wait_all(&mut ring, offsets.len()) {
        assert_eq!(c.into_result().unwrap(), len as u32, "write {c:?}");
    }

    // Reads into the second half.
    for (i, &off) in offsets.iter().enumerate() {
        let ptr = umem.at(HALF + i * len);
        // SAFETY: the slot stays mapped and untouched until wait_all reaps.
        unsafe {
            ring.push_read(0, ptr, len as u32, b.byte_offset() + off, 100 + i as u64)
                .unwrap();
        }
    }
    for c in wait_all(&mut ring, offsets.len()) {
        assert_eq!(c.into_result().unwrap(), len as u32, "read {c:?}");
    }
    let mut expect = vec![0u8; len];
    for (i, &off) in offsets.iter().enumerate() {
        pattern(off + 1, &mut expect);
        assert!(
            umem.slice_mut(HALF + i * len, len) == &expect[..],
            "read-back at {off}"
        );
    }

    // Plain READ into memory that is not registered.
    assert!(len <= outside.len);
    // SAFETY: `outside` stays mapped and untouched until wait_all reaps.
    unsafe {
        ring.push_read(
            0,
            outside.at(0),
            len as u32,
            b.byte_offset() + offsets[2],
            200,
        )
        .unwrap();
    }
    assert_eq!(wait_all(&mut ring, 1)[0].into_result().unwrap(), len as u32);
    pattern(offsets[2] + 1, &mut expect);
    assert!(
        outside.slice_mut(0, len) == &expect[..],
        "plain READ read-back"
    );

    // Pair assertion: the store itself, through the page cache.
    let plain = File::open(b.path()).unwrap();
    let mut got = vec![0u8; len];
    for &off in &offsets {
        plain
            .read_exact_at(&mut got, b.byte_offset() + off)
            .unwrap();
        pattern(off + 1, &mut expect);
        assert!(got == expect, "pread at {off}");
    }

    // At and across the end of the store: 0 bytes, then a short read.
    let end = b.size_bytes();
    assert_eq!(end % unit as u64, 0);
    // SAFETY: slots stay mapped and untouched until wait_all reaps.
    unsafe {
        ring.push_read(0, umem.at(HALF), len as u32, end, 300)
            .unwrap();
        ring.push_read(0, umem.at(HALF + len), len as u32, end - unit as u64, 301)
            .unwrap();
    }
    let eof = wait_all(&mut ring, 2);
    assert_eq!(eof[0].result, 0, "read at EOF");
    assert_eq!(eof[1].result, unit as i32, "read across EOF");

    // fdatasync and fsync go through.
    ring.push_fsync(0, true, 400).unwrap();
    ring.push_fsync(0, false, 401).unwrap();
    for c in wait_all(&mut ring, 2) {
        assert_eq!(c.result, 0, "fsync {c:?}");
    }
    drop(ring);
}

/// A read-only backing refuses writes: the kernel says EBADF, and it comes
/// back as an error result, not a panic or a silent success.
fn read_only_refuses_writes(path: &Path, io: IoMode) {
    let mut cfg = BackingConfig::new(path);
    cfg.read_only = true;
    cfg.io = io;
    let b = Backing::open(&cfg).unwrap();
    assert!(b.read_only());
    let mut umem = Mapping::new(MIB);
    umem.slice_mut(0, 4096).fill(0xA5);
    let mut ring = Uring::new(8, &[b.fd()], &[umem.region()]).unwrap();
    let unit = io_unit(&b);
    // SAFETY: the region stays mapped and untouched until wait_all reaps.
    unsafe {
        ring.push_write(0, umem.at(0), unit as u32, 0, 1, true)
            .unwrap();
        ring.push_read(0, umem.at(unit), unit as u32, 0, 2).unwrap();
    }
    let done = wait_all(&mut ring, 2);
    let err = done[0].into_result().unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EBADF),
        "write on read-only: {err}"
    );
    assert_eq!(
        done[1].into_result().unwrap(),
        unit as u32,
        "reads still work"
    );
}

#[test]
fn tmpfs_file_direct_or_clear_error() {
    let shm = Path::new("/dev/shm");
    assert_eq!(fs_type(shm), "tmpfs");
    let f = tempfile::NamedTempFile::new_in(shm).unwrap();
    f.as_file().set_len(4 * MIB as u64).unwrap();
    let cfg = BackingConfig::new(f.path());
    match Backing::open(&cfg) {
        Ok(b) => {
            eprintln!("tmpfs accepts O_DIRECT on this kernel");
            describe("tmpfs direct", &b);
            assert_eq!(b.io_mode(), IoMode::Direct);
            assert!(b.in_memory(), "a file on tmpfs is an in-memory store");
            exercise(&b);
        }
        Err(e) => {
            eprintln!("tmpfs refuses O_DIRECT on this kernel: {e}");
            assert!(
                matches!(e, BackingError::DirectIoUnsupported { .. }),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&*f.path().to_string_lossy()), "{msg}");
            assert!(msg.contains("--buffered"), "{msg}");
        }
    }
    let mut cfg = cfg;
    cfg.io = IoMode::Buffered;
    let b = Backing::open(&cfg).unwrap();
    describe("tmpfs buffered", &b);
    assert!(b.in_memory(), "a file on tmpfs is an in-memory store");
    assert!(b.check_aligned(0, 512, 3), "buffered takes any alignment");
    exercise(&b);
    read_only_refuses_writes(f.path(), IoMode::Buffered);
}

#[test]
fn root_filesystem_file_direct() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fs = fs_type(dir.path());
    eprintln!("CARGO_TARGET_TMPDIR is on {fs}");
    let path = dir.path().join("store.img");
    let f = File::create(&path).unwrap();
    f.set_len(8 * MIB as u64).unwrap();
    drop(f);

    let b = Backing::open(&BackingConfig::new(&path)).unwrap_or_else(|e| panic!("{fs}: {e}"));
    describe(&format!("{fs} direct"), &b);
    assert_eq!(b.kind(), BackingKind::File);
    assert_eq!(b.in_memory(), fs == "tmpfs" || fs == "ramfs", "{fs}");
    assert_eq!(b.logical_block_size(), 512);
    assert_eq!(b.sectors(), 8 * MIB as u64 / 512);
    assert!(b.dio_offset_align().is_power_of_two());
    // The kernel agrees with check_aligned: an I/O it calls misaligned fails.
    if b.dio_mem_align() > 1 {
        assert!(!b.check_aligned(0, 4096, 1));
    }
    exercise(&b);
    drop(b);
    read_only_refuses_writes(&path, IoMode::Direct);

    // A sub-range: export sector 0 is store byte 64 KiB.
    let mut cfg = BackingConfig::new(&path);
    cfg.offset_sectors = 128;
    cfg.len_sectors = Some(4096);
    let b = Backing::open(&cfg).unwrap();
    assert_eq!(b.byte_offset(), 64 * 1024);
    assert_eq!(b.sectors(), 4096);
    exercise(&b);
    cfg.len_sectors = Some(16384);
    let e = Backing::open(&cfg).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("16384 sectors at offset 128"), "{msg}");
    assert!(msg.contains("16384 sectors of 512 bytes"), "{msg}");
}

fn loop_device(sector_size: u32) {
    if !labkit::privileged(
        &format!("loop_device_{sector_size}"),
        &format!("sets up a loop device with --sector-size {sector_size}"),
    ) {
        return;
    }
    let dev = LoopDev::new(8 * MIB as u64, sector_size);
    let b = Backing::open(&BackingConfig::new(&dev.dev)).unwrap();
    describe(&format!("loop{sector_size}"), &b);
    assert_eq!(b.kind(), BackingKind::BlockDevice);
    // Its node is on devtmpfs (TMPFS_MAGIC) and its backing file on tmpfs or disk: a block
    // device is never an in-memory store, whatever `fstatfs` says of the node.
    assert_eq!(fs_type(Path::new("/dev")), "devtmpfs");
    assert!(!b.in_memory());
    assert_eq!(b.size_bytes(), 8 * MIB as u64);
    assert_eq!(b.sectors(), 8 * MIB as u64 / 512);
    assert_eq!(b.logical_block_size(), sector_size);
    assert_eq!(b.dio_offset_align(), sector_size);
    assert!(b.dio_mem_align().is_power_of_two());
    assert!(b.dio_mem_align() <= sector_size);

    // O_EXCL: a second open is refused with the busy message.
    let e = Backing::open(&BackingConfig::new(&dev.dev)).unwrap_err();
    assert!(matches!(e, BackingError::Busy { .. }), "{e:?}");
    let msg = e.to_string();
    let want = format!(
        "device busy: {} is in use (mounted, or opened exclusively by another process)",
        dev.dev.display()
    );
    assert!(msg.starts_with(&want), "{msg}");

    exercise(&b);

    // The kernel and check_aligned agree on a misaligned request.
    let umem = Mapping::new(MIB);
    let mut ring = Uring::new(4, &[b.fd()], &[umem.region()]).unwrap();
    let aligned = b.check_aligned(512, 512, umem.at(0) as usize);
    assert_eq!(aligned, sector_size == 512);
    // SAFETY: the region stays mapped and untouched until wait_all reaps.
    unsafe { ring.push_read(0, umem.at(0), 512, 512, 1).unwrap() };
    let r = wait_all(&mut ring, 1)[0];
    if aligned {
        assert_eq!(r.result, 512);
    } else {
        assert_eq!(r.result, -libc::EINVAL, "512 B on a {sector_size} B device");
    }
    drop(ring);
    drop(b);

    // Group commit exactly when the device has a volatile cache and no FUA (sysfs), and only
    // with direct I/O.
    let queue = |f: &str| {
        let name = dev.dev.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::read_to_string(format!("/sys/block/{name}/queue/{f}")).unwrap()
    };
    let volatile = queue("write_cache").trim() == "write back" && queue("fua").trim() == "0";
    let b = Backing::open(&BackingConfig::new(&dev.dev)).unwrap();
    let want = if volatile {
        Commit::Group
    } else {
        Commit::PerWrite
    };
    assert_eq!(b.commit(), want, "direct I/O on {}", dev.dev.display());
    drop(b);
    let mut cfg = BackingConfig::new(&dev.dev);
    cfg.io = IoMode::Buffered;
    let b = Backing::open(&cfg).unwrap();
    assert_eq!(b.commit(), Commit::PerWrite, "buffered I/O");
    drop(b);

    read_only_refuses_writes(&dev.dev, IoMode::Direct);
}

#[test]
fn loop_device_512() {
    loop_device(512);
}

#[test]
fn loop_device_4096() {
    loop_device(4096);
}

#[test]
fn loop_device_sub_range() {
    if !labkit::privileged("loop_device_sub_range", "sets up a loop device") {
        return;
    }
    let dev = LoopDev::new(4 * MIB as u64, 4096);
    let mut cfg = BackingConfig::new(&dev.dev);
    cfg.offset_sectors = 1;
    let b = Backing::open(&cfg).unwrap();
    // Export byte 0 is store byte 512: never aligned on a 4 KiB device.
    assert!(!b.check_aligned(0, 4096, 0));
    assert!(b.check_aligned(4096 - 512, 4096, 0));
    drop(b);
    cfg.offset_sectors = 8;
    cfg.len_sectors = Some(1024);
    let b = Backing::open(&cfg).unwrap();
    assert_eq!(b.byte_offset(), 4096);
    exercise(&b);
}

#[test]
fn iopoll_on_loop_device_falls_back_with_a_note() {
    if !labkit::privileged(
        "iopoll_on_loop_device_falls_back_with_a_note",
        "sets up a loop device",
    ) {
        return;
    }
    let dev = LoopDev::new(4 * MIB as u64, 512);
    let b = Backing::open(&BackingConfig::new(&dev.dev)).unwrap();
    let umem = Mapping::new(MIB);
    let cfg = UringConfig {
        sqpoll: None,
        iopoll: true,
    };
    let (mut ring, notes) = Uring::with_config(8, &[b.fd()], &[umem.region()], &cfg).unwrap();
    for n in &notes {
        eprintln!("note: {n}");
    }
    assert!(!ring.is_iopoll());
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].feature, "IOPOLL");
    assert!(notes[0].to_string().contains("poll queues"));
    // The fallback ring works.
    // SAFETY: the region stays mapped and untouched until wait_all reaps.
    unsafe { ring.push_read(0, umem.at(0), 4096, 0, 1).unwrap() };
    assert_eq!(wait_all(&mut ring, 1)[0].result, 4096);
}

#[test]
fn sqpoll_ring_moves_data() {
    if !labkit::privileged("sqpoll_ring_moves_data", "creates an SQPOLL ring") {
        return;
    }
    let f = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    f.as_file().set_len(MIB as u64).unwrap();
    let b = Backing::open(&BackingConfig::new(f.path())).unwrap();
    let mut umem = Mapping::new(MIB);
    pattern(9, umem.slice_mut(0, 8192));
    let cfg = UringConfig {
        sqpoll: Some(50),
        iopoll: false,
    };
    let (mut ring, notes) = Uring::with_config(8, &[b.fd()], &[umem.region()], &cfg).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert!(ring.is_sqpoll());
    // SAFETY: the region stays mapped and untouched until wait_all reaps.
    unsafe { ring.push_write(0, umem.at(0), 8192, 8192, 1, true).unwrap() };
    assert_eq!(wait_all(&mut ring, 1)[0].result, 8192);
    // SAFETY: as above.
    unsafe { ring.push_read(0, umem.at(65536), 8192, 8192, 2).unwrap() };
    assert_eq!(wait_all(&mut ring, 1)[0].result, 8192);
    let (written, read) = (
        umem.slice_mut(0, 8192).to_vec(),
        umem.slice_mut(65536, 8192),
    );
    assert!(written == read);
}

#[test]
fn region_over_1gib_is_split_and_usable() {
    if !labkit::privileged(
        "region_over_1gib_is_split_and_usable",
        "registers 1 GiB of pinned memory",
    ) {
        return;
    }
    let f = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    f.as_file().set_len(MIB as u64).unwrap();
    let mut data = vec![0u8; 4096];
    pattern(5, &mut data);
    f.as_file().write_all_at(&data, 4096).unwrap();
    let b = Backing::open(&BackingConfig::new(f.path())).unwrap();

    let len = (1 << 30) + 2 * MIB;
    let mut umem = Mapping::with_flags(len, libc::MAP_NORESERVE);
    let mut ring = Uring::new(4, &[b.fd()], &[umem.region()]).unwrap();
    assert_eq!(ring.registered_buffers(), 2);
    // Both sides of the 1 GiB split are fixed buffers; a straddling range is not.
    let second = (1 << 30) + 4096;
    assert!(ring.is_registered(umem.at(second), 4096));
    assert!(!ring.is_registered(umem.at((1 << 30) - 2048), 4096));
    // SAFETY: the region stays mapped and untouched until wait_all reaps.
    unsafe { ring.push_read(0, umem.at(second), 4096, 4096, 1).unwrap() };
    assert_eq!(wait_all(&mut ring, 1)[0].result, 4096);
    assert!(umem.slice_mut(second, 4096) == &data[..]);
}

/// Without CAP_IPC_LOCK, registered buffers are charged to RLIMIT_MEMLOCK,
/// and the error says so. Capabilities are per thread, so the test drops
/// CAP_IPC_LOCK in a thread of its own.
#[test]
fn memlock_error_names_the_limit() {
    if !labkit::privileged("memlock_error_names_the_limit", "drops CAP_IPC_LOCK") {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    assert_eq!(rc, 0);
    let limit = if lim.rlim_cur == libc::RLIM_INFINITY {
        // Only this thread lacks CAP_IPC_LOCK, so lowering the soft limit
        // affects nothing else in this process.
        let lower = libc::rlimit {
            rlim_cur: 8 * MIB as u64,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `lower` is a valid rlimit.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lower) };
        assert_eq!(rc, 0);
        8 * MIB
    } else {
        lim.rlim_cur as usize
    };
    let len = (limit + 16 * MIB).next_multiple_of(4096);
    let err = std::thread::spawn(move || {
        labkit::drop_capability_on_this_thread(labkit::CAP_IPC_LOCK);
        let umem = Mapping::with_flags(len, libc::MAP_NORESERVE);
        let result = Uring::new(4, &[], &[umem.region()]);
        result.unwrap_err()
    })
    .join()
    .unwrap();
    if lim.rlim_cur == libc::RLIM_INFINITY {
        // SAFETY: restoring the limit read above.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    }
    let msg = err.to_string();
    eprintln!("memlock error: {msg}");
    assert!(msg.contains("RLIMIT_MEMLOCK"), "{msg}");
    assert!(msg.contains("CAP_IPC_LOCK"), "{msg}");
}

/// A read-only block device (`losetup -r`, like a write-protected disk): exporting it writable
/// is refused with a message that says to use -r; read-only it is served, never in memory, and
/// FLUSH (fdatasync) works on it.
#[test]
fn read_only_loop_device_needs_read_only_export() {
    if !labkit::privileged(
        "read_only_loop_device_needs_read_only_export",
        "sets up a read-only loop device",
    ) {
        return;
    }
    let file = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    file.as_file().set_len(4 * MIB as u64).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let _detach = Detach(dev.clone());

    let e = Backing::open(&BackingConfig::new(&dev)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&*dev.to_string_lossy()), "{msg}");
    assert!(msg.contains("read-only with -r"), "{msg}");

    let mut cfg = BackingConfig::new(&dev);
    cfg.read_only = true;
    let b = Backing::open(&cfg).unwrap();
    assert_eq!(b.kind(), BackingKind::BlockDevice);
    assert!(!b.in_memory());
    assert!(b.read_only());
    let umem = Mapping::new(MIB);
    let mut ring = Uring::new(4, &[b.fd()], &[umem.region()]).unwrap();
    // SAFETY: the region stays mapped and untouched until wait_all reaps.
    unsafe { ring.push_read(0, umem.at(0), 4096, 0, 1).unwrap() };
    ring.push_fsync(0, true, 2).unwrap();
    for c in wait_all(&mut ring, 2) {
        assert!(c.result >= 0, "{c:?}");
    }
}
