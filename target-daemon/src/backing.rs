//! Backing stores: the regular file or block device behind one AoE export.
//!
//! AoE addresses 512-byte sectors. An export is a window of a store: it starts
//! `offset_sectors` sectors into the store (vblade `-o`) and is either
//! `len_sectors` long (vblade `-l`) or runs to the end of the store.
//!
//! Opening is deliberate (TigerBeetle's `open_file` is the model):
//! - [`IoMode::Direct`] (the default) opens with `O_DIRECT`. A filesystem that
//!   refuses it is an error that tells the admin to choose `--buffered`; there
//!   is never a silent fallback to the page cache.
//! - Block devices are always opened with `O_EXCL`, which the kernel refuses
//!   while the device is mounted or held exclusively by someone else. Two
//!   writers (a mounted filesystem and an initiator) would corrupt the data.
//!
//! What the store needs from every request (`O_DIRECT` alignment of the file
//! offset, the length and the memory address) is read once here with
//! `statx(STATX_DIOALIGN)` and answered by [`Backing::check_aligned`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The AoE sector size. Every AoE LBA counts these.
pub const SECTOR_SIZE: u64 = 512;

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` from `linux/fs.h`; libc does not
/// export it. This is the asm-generic ioctl encoding (x86, arm, riscv...):
/// dir(read = 2) << 30 | size << 16 | type << 8 | nr.
const BLKGETSIZE64: libc::Ioctl = {
    let size = std::mem::size_of::<libc::size_t>() as u32;
    ((2u32 << 30) | (size << 16) | (0x12 << 8) | 114) as libc::Ioctl
};

#[cfg(target_arch = "x86_64")]
const _: () = assert!(BLKGETSIZE64 as u32 == 0x8008_1272);

/// `BLKROGET` = `_IO(0x12, 94)` from `linux/fs.h` (libc does not export it): whether the block
/// device is read-only. Opening a read-only device for writing succeeds, and every write then
/// fails, so this is asked at open.
const BLKROGET: libc::Ioctl = ((0x12 << 8) | 94) as libc::Ioctl;

#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
))]
compile_error!("BLKGETSIZE64 above uses the asm-generic ioctl encoding; this architecture differs");

/// How data moves between the store and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// `O_DIRECT`: no page cache, DMA straight into the packet buffers.
    #[default]
    Direct,
    /// Through the page cache. Only when the admin asks for it (`--buffered`).
    Buffered,
}

/// When a write may be acknowledged to the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge a write only once it is durable (`RWF_DSYNC`).
    #[default]
    Sync,
    /// Acknowledge once the store accepted it; a crash may lose it.
    WriteBack,
}

/// How a durable write ([`Durability::Sync`]) is made durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Each write carries `RWF_DSYNC`: one operation per write. On a block device with FUA or
    /// no volatile cache, that is a single device command.
    PerWrite,
    /// Group commit, for a store whose device has a volatile write cache and no FUA (most SATA
    /// disks and SSDs under Linux's default `libata.fua=0`, many virtual disks), where every
    /// `RWF_DSYNC` write costs a cache flush of its own (for a file on ext4, also a hop through
    /// a completion workqueue). While several writes of an export are outstanding, they go
    /// without `RWF_DSYNC`, and once some have completed one `RWF_DSYNC` write (the first one's
    /// bytes again) flushes for all of them: each is acknowledged when the commit issued after
    /// it completed succeeds. A batch pays one flush (see the worker's `commit` module).
    Group,
}

/// What the path turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// A regular file.
    File,
    /// A block device (opened with `O_EXCL`).
    BlockDevice,
}

/// The admin's description of one backing store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingConfig {
    /// The file or block device.
    pub path: PathBuf,
    /// Where the export starts inside the store, in 512-byte sectors (vblade `-o`).
    pub offset_sectors: u64,
    /// The export length in 512-byte sectors (vblade `-l`); `None` means "to the end".
    pub len_sectors: Option<u64>,
    /// Open read-only and refuse writes (vblade `-r`).
    pub read_only: bool,
    /// Direct (default) or buffered I/O.
    pub io: IoMode,
    /// When writes are acknowledged.
    pub durability: Durability,
    /// How durable writes are made durable; `None`: decided from what the store is
    /// ([`Backing::commit`]). `Some(Commit::Group)` is for the simulation, whose disk is not
    /// the file: on a real store it needs direct I/O and a device without FUA.
    pub commit: Option<Commit>,
}

impl BackingConfig {
    /// A read-write, direct, synchronous export of the whole store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> BackingConfig {
        BackingConfig {
            path: path.into(),
            offset_sectors: 0,
            len_sectors: None,
            read_only: false,
            io: IoMode::Direct,
            durability: Durability::Sync,
            commit: None,
        }
    }
}

/// Why a backing store could not be opened. Every message names the path and
/// says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// ENOENT.
    #[error("backing store {path} does not exist: check the path (create the file or attach the device first)")]
    NotFound { path: PathBuf },
    /// EACCES or EPERM.
    #[error("permission denied opening backing store {path} {mode}: fix its ownership or permissions, run xblade as a user that may open it, or open it read-only with -r")]
    PermissionDenied { path: PathBuf, mode: &'static str },
    /// EROFS.
    #[error(
        "backing store {path} is on a read-only filesystem or device: open it read-only with -r"
    )]
    ReadOnlyFs { path: PathBuf },
    /// EBUSY from the `O_EXCL` open of a block device.
    #[error("device busy: {path} is in use (mounted, or opened exclusively by another process); unmount it or stop the other user before exporting it")]
    Busy { path: PathBuf },
    /// EINVAL at open with `O_DIRECT`, or a filesystem that reports no direct I/O support.
    #[error("backing store {path} does not support O_DIRECT (direct I/O) on its filesystem: move it to a filesystem that does, or choose buffered I/O explicitly with --buffered (xblade never falls back on its own)")]
    DirectIoUnsupported { path: PathBuf },
    /// Neither a regular file nor a block device.
    #[error("backing store {path} is {what}, not a regular file or a block device: give a file or a block device")]
    NotAStore { path: PathBuf, what: &'static str },
    /// The store has size 0.
    #[error("backing store {path} is empty (size 0): grow the file (e.g. truncate -s 1G {path}) or pick another device")]
    ZeroSize { path: PathBuf },
    /// The store is smaller than one sector past the offset.
    #[error("export offset {offset_sectors} sectors is at or beyond the end of backing store {path} ({store_sectors} sectors of 512 bytes): use a smaller -o")]
    OffsetBeyondEnd {
        path: PathBuf,
        offset_sectors: u64,
        store_sectors: u64,
    },
    /// `offset + len` exceeds the store.
    #[error("export of {len_sectors} sectors at offset {offset_sectors} ends at sector {end_sectors}, beyond the end of backing store {path} ({store_sectors} sectors of 512 bytes): use a smaller -l or -o")]
    RangeBeyondEnd {
        path: PathBuf,
        offset_sectors: u64,
        len_sectors: u64,
        end_sectors: u64,
        store_sectors: u64,
    },
    /// `-l 0`.
    #[error("export length 0 sectors for backing store {path}: give a positive -l or leave it out to export to the end")]
    ZeroLength { path: PathBuf },
    /// The path was replaced between `stat` and `open`.
    #[error("backing store {path} changed while it was being opened: check that nothing else is replacing it and retry")]
    Changed { path: PathBuf },
    /// Any other failure, with the step that failed.
    #[error("cannot {step} backing store {path}: {source}")]
    Io {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

impl BackingError {
    /// The store named in the error.
    pub fn path(&self) -> &Path {
        match self {
            BackingError::NotFound { path }
            | BackingError::PermissionDenied { path, .. }
            | BackingError::ReadOnlyFs { path }
            | BackingError::Busy { path }
            | BackingError::DirectIoUnsupported { path }
            | BackingError::NotAStore { path, .. }
            | BackingError::ZeroSize { path }
            | BackingError::OffsetBeyondEnd { path, .. }
            | BackingError::RangeBeyondEnd { path, .. }
            | BackingError::ZeroLength { path }
            | BackingError::Changed { path }
            | BackingError::Io { path, .. } => path,
        }
    }
}

/// Why an in-memory store's memory could not be made sure of ([`Backing::ensure_allocated`]).
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The filesystem (tmpfs) cannot hold the whole export.
    #[error("in-memory store {path} needs {mib} MiB, but its filesystem has room for only {} MiB more: writes past that would fail. Make the tmpfs larger (mount -o remount,size=...), export a smaller image (or a sub-range with -l), or put the image on a disk", free_mib.map_or("an unknown number of".to_string(), |m| m.to_string()))]
    NoSpace {
        path: PathBuf,
        mib: u64,
        free_mib: Option<u64>,
    },
    /// A read-only in-memory store with a hole: a read of it allocates memory, which can fail.
    #[error("read-only in-memory store {path} is sparse (a hole at byte {at}): on tmpfs even reading a hole takes memory, which fails once the tmpfs is full. Allocate it first: fallocate -l {size} {path}")]
    Sparse { path: PathBuf, at: u64, size: u64 },
    /// Any other failure.
    #[error("cannot allocate in-memory store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why an export window does not fit its store (no path yet: pure math).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryError {
    /// The store has no whole sector.
    ZeroSize,
    /// `-l 0`.
    ZeroLength,
    /// `offset >= store_sectors`.
    OffsetBeyondEnd {
        offset_sectors: u64,
        store_sectors: u64,
    },
    /// `offset + len > store_sectors` (or overflows).
    RangeBeyondEnd {
        offset_sectors: u64,
        len_sectors: u64,
        end_sectors: u64,
        store_sectors: u64,
    },
}

impl GeometryError {
    fn at(self, path: &Path) -> BackingError {
        let path = path.to_path_buf();
        match self {
            GeometryError::ZeroSize => BackingError::ZeroSize { path },
            GeometryError::ZeroLength => BackingError::ZeroLength { path },
            GeometryError::OffsetBeyondEnd {
                offset_sectors,
                store_sectors,
            } => BackingError::OffsetBeyondEnd {
                path,
                offset_sectors,
                store_sectors,
            },
            GeometryError::RangeBeyondEnd {
                offset_sectors,
                len_sectors,
                end_sectors,
                store_sectors,
            } => BackingError::RangeBeyondEnd {
                path,
                offset_sectors,
                len_sectors,
                end_sectors,
                store_sectors,
            },
        }
    }
}

/// Where an export lies inside its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportGeometry {
    /// The export size in 512-byte sectors.
    pub sectors: u64,
    /// The byte offset of export sector 0 inside the store.
    pub byte_offset: u64,
}

/// The export window for a store of `store_bytes` bytes. A trailing partial
/// sector of the store is not exported.
pub fn export_geometry(
    store_bytes: u64,
    offset_sectors: u64,
    len_sectors: Option<u64>,
) -> Result<ExportGeometry, GeometryError> {
    let store_sectors = store_bytes / SECTOR_SIZE;
    if store_sectors == 0 {
        return Err(GeometryError::ZeroSize);
    }
    if offset_sectors >= store_sectors {
        return Err(GeometryError::OffsetBeyondEnd {
            offset_sectors,
            store_sectors,
        });
    }
    let sectors = match len_sectors {
        None => store_sectors - offset_sectors,
        Some(0) => return Err(GeometryError::ZeroLength),
        Some(len_sectors) => {
            let end_sectors = offset_sectors.saturating_add(len_sectors);
            if end_sectors > store_sectors {
                return Err(GeometryError::RangeBeyondEnd {
                    offset_sectors,
                    len_sectors,
                    end_sectors,
                    store_sectors,
                });
            }
            len_sectors
        }
    };
    // offset_sectors < store_sectors = store_bytes / 512, so this cannot overflow.
    let byte_offset = offset_sectors * SECTOR_SIZE;
    assert!(sectors > 0);
    assert!(byte_offset + sectors * SECTOR_SIZE <= store_bytes);
    Ok(ExportGeometry {
        sectors,
        byte_offset,
    })
}

/// `O_DIRECT` alignment rules, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioAlign {
    /// Required alignment of the memory address.
    pub mem: u32,
    /// Required alignment of the file offset and of the length.
    pub offset: u32,
}

/// True when an I/O of `len_bytes` at store offset `offset_bytes` from memory
/// `mem_addr` satisfies `align`. Zero-length I/O is never "aligned": it is not
/// a request the daemon should issue.
pub fn dio_aligned(align: DioAlign, offset_bytes: u64, len_bytes: u64, mem_addr: usize) -> bool {
    assert!(align.mem.is_power_of_two());
    assert!(align.offset.is_power_of_two());
    let offset_mask = u64::from(align.offset) - 1;
    let mem_mask = align.mem as usize - 1;
    len_bytes > 0
        && offset_bytes & offset_mask == 0
        && len_bytes & offset_mask == 0
        && mem_addr & mem_mask == 0
}

/// An open backing store and everything the daemon needs to know about it.
#[derive(Debug)]
pub struct Backing {
    file: File,
    path: PathBuf,
    kind: BackingKind,
    size_bytes: u64,
    geometry: ExportGeometry,
    logical_block_size: u32,
    dio: DioAlign,
    /// `dio` came from `statx(STATX_DIOALIGN)`, not the fallback.
    dio_reported: bool,
    read_only: bool,
    io_mode: IoMode,
    durability: Durability,
    commit: Commit,
    /// A regular file on tmpfs or ramfs (see [`Backing::in_memory`]).
    in_memory: bool,
}

impl Backing {
    /// Open the store described by `cfg` and check the export window fits it.
    pub fn open(cfg: &BackingConfig) -> Result<Backing, BackingError> {
        let path = cfg.path.as_path();
        let (file, kind) = open_checked(cfg)?;
        let (size_bytes, logical_block_size) = size_and_block(&file, kind, path)?;
        assert!(logical_block_size.is_power_of_two());
        assert!(logical_block_size >= SECTOR_SIZE as u32);
        let (dio, dio_reported) = dio_rules(&file, cfg, logical_block_size)?;
        let in_memory = store_in_memory(kind, crate::sys::fs_magic(file.as_raw_fd()));
        // The device that takes the writes: the block device itself, or the one holding the
        // file's filesystem (none known, as for network or multi-device filesystems: per write).
        // Through the page cache, a `RWF_DSYNC` write writes back its own range only, so it
        // cannot commit others: per write.
        let commit = cfg
            .commit
            .unwrap_or_else(|| match (cfg.io, file.metadata()) {
                (IoMode::Direct, Ok(m)) if kind == BackingKind::File => block_commit(m.dev()),
                (IoMode::Direct, Ok(m)) => block_commit(m.rdev()),
                _ => Commit::PerWrite,
            });

        let geometry = export_geometry(size_bytes, cfg.offset_sectors, cfg.len_sectors)
            .map_err(|e| e.at(path))?;
        if size_bytes % SECTOR_SIZE != 0 {
            tracing::warn!(
                path = %path.display(),
                size_bytes,
                "backing store size is not a multiple of 512; the trailing partial sector is not exported"
            );
        }
        if cfg.io == IoMode::Direct && geometry.byte_offset % u64::from(dio.offset) != 0 {
            tracing::warn!(
                path = %path.display(),
                byte_offset = geometry.byte_offset,
                dio_offset_align = dio.offset,
                "export offset is not aligned for O_DIRECT on this store; no request can go straight to the store"
            );
        }
        Ok(Backing {
            file,
            path: path.to_path_buf(),
            kind,
            size_bytes,
            geometry,
            logical_block_size,
            dio,
            dio_reported,
            read_only: cfg.read_only,
            io_mode: cfg.io,
            durability: cfg.durability,
            commit,
            in_memory,
        })
    }

    /// The open descriptor (owned by this `Backing`; valid while it lives).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File or block device.
    pub fn kind(&self) -> BackingKind {
        self.kind
    }

    /// Whether the store is a regular file that lives in memory (tmpfs, ramfs): volatile, and
    /// served through a mapping (io_uring cannot issue I/O on such files without blocking, so it
    /// would hand every request to a kernel worker thread). Never a block device, whatever
    /// filesystem holds its node: see [`store_in_memory`].
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// The whole store's size in bytes (not just the export).
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The export size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.geometry.sectors
    }

    /// The byte offset of export sector 0 inside the store.
    pub fn byte_offset(&self) -> u64 {
        self.geometry.byte_offset
    }

    /// The store's logical block size: `BLKSSZGET` for block devices, 512 for
    /// files (a file is byte-addressable; see the DIO alignment for direct I/O).
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    /// `O_DIRECT` memory alignment (`stx_dio_mem_align`, else the logical block size).
    pub fn dio_mem_align(&self) -> u32 {
        self.dio.mem
    }

    /// `O_DIRECT` offset and length alignment (`stx_dio_offset_align`, else the
    /// logical block size).
    pub fn dio_offset_align(&self) -> u32 {
        self.dio.offset
    }

    /// Whether the DIO alignment came from `statx(STATX_DIOALIGN)` (true) or
    /// is the logical-block-size fallback (false).
    pub fn dio_align_reported(&self) -> bool {
        self.dio_reported
    }

    /// Writes must be refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// When writes may be acknowledged.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How durable writes are made durable (see [`Commit`]).
    pub fn commit(&self) -> Commit {
        self.commit
    }

    /// Direct or buffered.
    pub fn io_mode(&self) -> IoMode {
        self.io_mode
    }

    /// Make sure every byte of the export window has its storage allocated, so that no write
    /// (nor, on tmpfs, a read fault) through a mapping can fail for want of space: a writable
    /// store is `fallocate`d over the window; a read-only one must have no hole in it. For
    /// in-memory stores, where the failure would otherwise be a SIGBUS.
    pub fn ensure_allocated(&self) -> Result<(), AllocError> {
        let (start, len) = (
            self.geometry.byte_offset,
            self.geometry.sectors * SECTOR_SIZE,
        );
        if !self.read_only {
            return fallocate(self.file.as_fd(), start, len).map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    AllocError::NoSpace {
                        path: self.path.clone(),
                        mib: len.div_ceil(1 << 20),
                        free_mib: free_bytes(self.file.as_fd()).map(|b| b >> 20),
                    }
                } else {
                    AllocError::Io {
                        path: self.path.clone(),
                        source: e,
                    }
                }
            });
        }
        match first_hole(self.file.as_fd(), start, start + len) {
            Ok(None) => Ok(()),
            Ok(Some(at)) => Err(AllocError::Sparse {
                path: self.path.clone(),
                at,
                size: self.size_bytes,
            }),
            Err(e) => Err(AllocError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    /// Can an I/O of `len_bytes` at export byte `offset_bytes` (LBA × 512,
    /// relative to the export; [`Self::byte_offset`] is added here) with memory
    /// at `mem_addr` be issued as is? Always true in buffered mode (for a
    /// non-empty I/O); in direct mode the store offset, the length and the
    /// address must meet the `O_DIRECT` alignment.
    pub fn check_aligned(&self, offset_bytes: u64, len_bytes: u64, mem_addr: usize) -> bool {
        match self.io_mode {
            IoMode::Buffered => len_bytes > 0,
            IoMode::Direct => match self.geometry.byte_offset.checked_add(offset_bytes) {
                Some(store_offset) => dio_aligned(self.dio, store_offset, len_bytes, mem_addr),
                None => false,
            },
        }
    }
}

impl AsRawFd for Backing {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Backing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn io_error(path: &Path, step: &'static str, source: io::Error) -> BackingError {
    BackingError::Io {
        path: path.to_path_buf(),
        step,
        source,
    }
}

/// stat, decide the flags from the kind, open, and check that what was opened
/// is what was stat'ed (the path may be swapped in between).
/// How long an `O_EXCL` open of a block device keeps retrying EBUSY. A holder that just closed
/// the device may still own the claim for a moment: io_uring drops registered files from a
/// kernel work item after the ring (or the whole process) is gone, so a daemon restarted at once,
/// or a device reopened right after a ring was dropped, would otherwise see a busy device.
const EXCL_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// [`open_store`], retrying a block device's EBUSY for up to [`EXCL_SETTLE`].
fn open_exclusive_settled(cfg: &BackingConfig, kind: BackingKind) -> io::Result<File> {
    let deadline = std::time::Instant::now() + EXCL_SETTLE;
    loop {
        match open_store(cfg, kind) {
            Err(e) if kind == BackingKind::BlockDevice && e.raw_os_error() == Some(libc::EBUSY) => {
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Whether a store of `kind`, whose open descriptor's filesystem has `fstatfs` magic `fs_magic`,
/// lives in memory. Decided from what the open file *is*: for a block device `fstatfs` describes
/// the filesystem holding the device node (devtmpfs reports TMPFS_MAGIC), not the device, so a
/// block device is never in memory; its data goes to the device with O_DIRECT.
pub fn store_in_memory(kind: BackingKind, fs_magic: Option<i64>) -> bool {
    kind == BackingKind::File
        && fs_magic.is_some_and(|m| m == crate::sys::TMPFS_MAGIC || m == crate::sys::RAMFS_MAGIC)
}

/// How durable writes to block device `rdev` (the store, or the device under its filesystem)
/// are best made durable: group commit when the device has a volatile write cache and no FUA
/// (each `RWF_DSYNC` write would then cost a cache flush), else a `RWF_DSYNC` write each (a FUA
/// write, or a plain one). Unknown (no such device in sysfs): per write.
fn block_commit(rdev: u64) -> Commit {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dev = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // A partition has no queue directory of its own: its disk's is one level up.
    let queue = [dev.join("queue"), dev.join("../queue")]
        .into_iter()
        .find(|q| q.is_dir());
    let read = |name: &str| {
        queue
            .as_ref()
            .and_then(|q| std::fs::read_to_string(q.join(name)).ok())
            .map(|s| s.trim().to_string())
    };
    match (read("write_cache").as_deref(), read("fua").as_deref()) {
        (Some("write back"), Some("0")) => Commit::Group,
        _ => Commit::PerWrite,
    }
}

fn open_checked(cfg: &BackingConfig) -> Result<(File, BackingKind), BackingError> {
    let path = cfg.path.as_path();
    let meta = std::fs::metadata(path).map_err(|e| open_error(cfg, e))?;
    let kind = kind_of(path, &meta)?;
    let file = open_exclusive_settled(cfg, kind).map_err(|e| open_error(cfg, e))?;
    let meta_open = file.metadata().map_err(|e| io_error(path, "stat", e))?;
    if meta_open.dev() != meta.dev()
        || meta_open.ino() != meta.ino()
        || meta_open.rdev() != meta.rdev()
    {
        return Err(BackingError::Changed {
            path: path.to_path_buf(),
        });
    }
    assert_eq!(kind_of(path, &meta_open)?, kind);
    // A read-only block device (write-protected, `losetup -r`, `blockdev --setro`) opens for
    // writing without complaint; exporting it writable would fail every write.
    if kind == BackingKind::BlockDevice
        && !cfg.read_only
        && blkdev_read_only(file.as_fd()).map_err(|e| io_error(path, "ask read-only of", e))?
    {
        return Err(BackingError::ReadOnlyFs {
            path: path.to_path_buf(),
        });
    }
    Ok((file, kind))
}

/// The store's size in bytes and its logical block size.
fn size_and_block(file: &File, kind: BackingKind, path: &Path) -> Result<(u64, u32), BackingError> {
    match kind {
        BackingKind::File => {
            let meta = file.metadata().map_err(|e| io_error(path, "stat", e))?;
            Ok((meta.size(), SECTOR_SIZE as u32))
        }
        BackingKind::BlockDevice => {
            let fd = file.as_fd();
            let size = blkdev_size_bytes(fd).map_err(|e| io_error(path, "read the size of", e))?;
            let lbs = blkdev_logical_block_size(fd)
                .map_err(|e| io_error(path, "read the logical block size of", e))?;
            Ok((size, lbs))
        }
    }
}

/// The `O_DIRECT` alignment rules, and whether `statx` reported them.
fn dio_rules(
    file: &File,
    cfg: &BackingConfig,
    logical_block_size: u32,
) -> Result<(DioAlign, bool), BackingError> {
    let path = cfg.path.as_path();
    match statx_dio_align(file.as_fd()).map_err(|e| io_error(path, "statx", e))? {
        Some(Some(dio)) => Ok((dio, true)),
        // The filesystem knows about direct I/O and says it has none: an
        // O_DIRECT open that "succeeded" would silently go through the page
        // cache (e.g. ext4 data=journal).
        Some(None) if cfg.io == IoMode::Direct => Err(BackingError::DirectIoUnsupported {
            path: path.to_path_buf(),
        }),
        // Not reported (tmpfs, older filesystems or kernels), or buffered
        // anyway: the logical block size is the conservative answer.
        Some(None) | None => {
            let dio = DioAlign {
                mem: logical_block_size,
                offset: logical_block_size,
            };
            Ok((dio, false))
        }
    }
}

fn kind_of(path: &Path, meta: &std::fs::Metadata) -> Result<BackingKind, BackingError> {
    let ft = meta.file_type();
    let what = if ft.is_file() {
        return Ok(BackingKind::File);
    } else if ft.is_block_device() {
        return Ok(BackingKind::BlockDevice);
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "an unknown kind of file"
    };
    Err(BackingError::NotAStore {
        path: path.to_path_buf(),
        what,
    })
}

fn open_store(cfg: &BackingConfig, kind: BackingKind) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if cfg.io == IoMode::Direct {
        flags |= libc::O_DIRECT;
    }
    if kind == BackingKind::BlockDevice {
        // Without O_CREAT, O_EXCL on a block device means "exclusive open":
        // EBUSY while mounted or held by another exclusive opener.
        flags |= libc::O_EXCL;
    }
    OpenOptions::new()
        .read(true)
        .write(!cfg.read_only)
        .custom_flags(flags)
        .open(&cfg.path)
}

fn open_error(cfg: &BackingConfig, e: io::Error) -> BackingError {
    let path = cfg.path.clone();
    match e.raw_os_error() {
        Some(libc::ENOENT) => BackingError::NotFound { path },
        Some(libc::EACCES | libc::EPERM) => BackingError::PermissionDenied {
            path,
            mode: if cfg.read_only {
                "read-only"
            } else {
                "read-write"
            },
        },
        Some(libc::EROFS) => BackingError::ReadOnlyFs { path },
        Some(libc::EBUSY) => BackingError::Busy { path },
        Some(libc::EINVAL) if cfg.io == IoMode::Direct => {
            BackingError::DirectIoUnsupported { path }
        }
        _ => BackingError::Io {
            path,
            step: "open",
            source: e,
        },
    }
}

fn blkdev_size_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
    // a live, writable u64; `fd` is a valid open descriptor for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn blkdev_read_only(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which points at a live, writable
    // c_int; `fd` is a valid open descriptor for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKROGET, &mut ro as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ro != 0)
}

fn blkdev_logical_block_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at a
    // live, writable c_int; `fd` is a valid open descriptor for the call.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::BLKSSZGET,
            &mut lbs as *mut libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    match u32::try_from(lbs) {
        Ok(lbs) if lbs.is_power_of_two() && lbs >= SECTOR_SIZE as u32 => Ok(lbs),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("BLKSSZGET returned an implausible logical block size {lbs}"),
        )),
    }
}

fn fallocate(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate takes no memory arguments; `fd` is open for the call.
    let rc = unsafe { libc::fallocate(fd.as_raw_fd(), 0, offset, len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The first hole in `start..end` of the file, if any (`SEEK_HOLE`).
fn first_hole(fd: BorrowedFd<'_>, start: u64, end: u64) -> io::Result<Option<u64>> {
    let Ok(at) = libc::off_t::try_from(start) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: lseek takes no memory arguments. It moves the shared file offset, which nothing
    // uses: every I/O on a store names its offset.
    let hole = unsafe { libc::lseek(fd.as_raw_fd(), at, libc::SEEK_HOLE) };
    if hole < 0 {
        return Err(io::Error::last_os_error());
    }
    let hole = hole as u64;
    Ok((hole < end).then_some(hole))
}

/// Free bytes of the filesystem holding the file.
fn free_bytes(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: a zeroed statvfs is a valid value of the plain-data struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatvfs writes one statvfs into `st`; `fd` is open for the call.
    let rc = unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) };
    (rc == 0).then(|| st.f_bavail.saturating_mul(st.f_frsize))
}

/// `STATX_DIOALIGN` from `linux/stat.h` (Linux 6.1); libc 0.2.191 exports it
/// and the `stx_dio_mem_align`/`stx_dio_offset_align` fields of `struct statx`.
const STATX_DIOALIGN: u32 = libc::STATX_DIOALIGN;

/// `None`: the kernel or filesystem does not report DIO alignment.
/// `Some(None)`: it reports that direct I/O is not supported (both values 0).
/// `Some(Some(a))`: the alignment rules.
fn statx_dio_align(fd: BorrowedFd<'_>) -> io::Result<Option<Option<DioAlign>>> {
    // SAFETY: `statx` is plain old data (integers only); all-zero is valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: `empty` is a NUL-terminated string and `stx` a writable statx
    // that outlive the call; with AT_EMPTY_PATH the kernel stats `fd` itself.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if stx.stx_mask & STATX_DIOALIGN == 0 {
        return Ok(None);
    }
    let (mem, offset) = (stx.stx_dio_mem_align, stx.stx_dio_offset_align);
    if mem == 0 || offset == 0 {
        return Ok(Some(None));
    }
    if !mem.is_power_of_two() || !offset.is_power_of_two() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("statx reported implausible DIO alignment: memory {mem}, offset {offset}"),
        ));
    }
    Ok(Some(Some(DioAlign { mem, offset })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_store_is_exported() {
        let g = export_geometry(1 << 20, 0, None).unwrap();
        assert_eq!(g.sectors, 2048);
        assert_eq!(g.byte_offset, 0);
    }

    #[test]
    fn offset_shrinks_export_and_moves_start() {
        let g = export_geometry(1 << 20, 8, None).unwrap();
        assert_eq!(g.sectors, 2040);
        assert_eq!(g.byte_offset, 4096);
    }

    #[test]
    fn sub_range_fits_exactly() {
        let g = export_geometry(1 << 20, 48, Some(2000)).unwrap();
        assert_eq!(g.sectors, 2000);
        assert_eq!(g.byte_offset, 48 * 512);
        // The last sector of the store is the last sector of the export.
        assert_eq!(g.byte_offset + g.sectors * 512, 1 << 20);
    }

    #[test]
    fn sub_range_one_past_end_is_refused() {
        assert_eq!(
            export_geometry(1 << 20, 48, Some(2001)),
            Err(GeometryError::RangeBeyondEnd {
                offset_sectors: 48,
                len_sectors: 2001,
                end_sectors: 2049,
                store_sectors: 2048,
            })
        );
    }

    #[test]
    fn huge_length_does_not_overflow() {
        let e = export_geometry(1 << 20, 1, Some(u64::MAX)).unwrap_err();
        assert!(matches!(
            e,
            GeometryError::RangeBeyondEnd {
                end_sectors: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn offset_at_or_beyond_end_is_refused() {
        for offset_sectors in [2048, 2049, u64::MAX] {
            assert_eq!(
                export_geometry(1 << 20, offset_sectors, None),
                Err(GeometryError::OffsetBeyondEnd {
                    offset_sectors,
                    store_sectors: 2048
                })
            );
        }
        // The last sector alone is still a valid export.
        assert_eq!(export_geometry(1 << 20, 2047, None).unwrap().sectors, 1);
    }

    #[test]
    fn zero_and_partial_sizes() {
        assert_eq!(export_geometry(0, 0, None), Err(GeometryError::ZeroSize));
        assert_eq!(export_geometry(511, 0, None), Err(GeometryError::ZeroSize));
        // A trailing partial sector is dropped.
        assert_eq!(export_geometry(1023, 0, None).unwrap().sectors, 1);
        assert_eq!(
            export_geometry(4096, 0, Some(0)),
            Err(GeometryError::ZeroLength)
        );
    }

    #[test]
    fn only_regular_files_on_tmpfs_or_ramfs_are_in_memory() {
        use crate::sys::{RAMFS_MAGIC, TMPFS_MAGIC};
        const EXT4_MAGIC: i64 = 0xef53;
        assert!(store_in_memory(BackingKind::File, Some(TMPFS_MAGIC)));
        assert!(store_in_memory(BackingKind::File, Some(RAMFS_MAGIC)));
        assert!(!store_in_memory(BackingKind::File, Some(EXT4_MAGIC)));
        assert!(!store_in_memory(BackingKind::File, None));
        // A device node on devtmpfs reports TMPFS_MAGIC: still a device.
        assert!(!store_in_memory(
            BackingKind::BlockDevice,
            Some(TMPFS_MAGIC)
        ));
        assert!(!store_in_memory(
            BackingKind::BlockDevice,
            Some(RAMFS_MAGIC)
        ));
    }

    #[test]
    fn dio_alignment_positive_and_negative() {
        let a = DioAlign {
            mem: 512,
            offset: 4096,
        };
        assert!(dio_aligned(a, 0, 4096, 0x1000));
        assert!(dio_aligned(a, 8192, 8192, 0x1200));
        assert!(!dio_aligned(a, 512, 4096, 0x1000), "offset");
        assert!(!dio_aligned(a, 0, 512, 0x1000), "length");
        assert!(!dio_aligned(a, 0, 4096, 0x1100), "memory");
        assert!(!dio_aligned(a, 0, 0, 0x1000), "empty");
    }

    fn store_of(bytes: u64) -> (tempfile::NamedTempFile, BackingConfig) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(bytes).unwrap();
        let mut cfg = BackingConfig::new(f.path());
        // /tmp may be any filesystem; these tests are about messages and math.
        cfg.io = IoMode::Buffered;
        (f, cfg)
    }

    #[test]
    fn open_file_reports_geometry() {
        let (_f, mut cfg) = store_of(1 << 20);
        cfg.offset_sectors = 16;
        cfg.len_sectors = Some(100);
        let b = Backing::open(&cfg).unwrap();
        assert_eq!(b.kind(), BackingKind::File);
        assert_eq!(b.sectors(), 100);
        assert_eq!(b.byte_offset(), 16 * 512);
        assert_eq!(b.size_bytes(), 1 << 20);
        assert_eq!(b.logical_block_size(), 512);
        assert!(b.fd() >= 0);
        assert!(b.check_aligned(0, 512, 1), "buffered accepts any address");
        assert!(!b.check_aligned(0, 0, 0));
    }

    #[test]
    fn check_aligned_adds_the_export_offset() {
        let (_f, mut cfg) = store_of(1 << 20);
        cfg.offset_sectors = 1;
        let mut b = Backing::open(&cfg).unwrap();
        b.io_mode = IoMode::Direct;
        b.dio = DioAlign {
            mem: 512,
            offset: 4096,
        };
        // Export byte 0 is store byte 512: not 4096-aligned.
        assert!(!b.check_aligned(0, 4096, 0x1000));
        assert!(b.check_aligned(4096 - 512, 4096, 0x1000));
        assert!(!b.check_aligned(u64::MAX, 4096, 0x1000));
    }

    #[test]
    fn missing_path_is_named() {
        let cfg = BackingConfig::new("/nonexistent/xblade-test/disk.img");
        let e = Backing::open(&cfg).unwrap_err();
        assert!(matches!(e, BackingError::NotFound { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/xblade-test/disk.img"), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");
        assert_eq!(e.path(), Path::new("/nonexistent/xblade-test/disk.img"));
    }

    #[test]
    fn directory_is_not_a_store() {
        let d = tempfile::tempdir().unwrap();
        let e = Backing::open(&BackingConfig::new(d.path())).unwrap_err();
        assert!(
            matches!(
                e,
                BackingError::NotAStore {
                    what: "a directory",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(&*d.path().to_string_lossy()));
    }

    #[test]
    fn character_device_is_not_a_store() {
        let e = Backing::open(&BackingConfig::new("/dev/null")).unwrap_err();
        assert!(
            e.to_string().contains("/dev/null is a character device"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_is_refused_with_path() {
        let (f, cfg) = store_of(0);
        let e = Backing::open(&cfg).unwrap_err();
        assert!(matches!(e, BackingError::ZeroSize { .. }), "{e:?}");
        assert!(e.to_string().contains(&*f.path().to_string_lossy()));
    }

    #[test]
    fn range_error_names_path_and_numbers() {
        let (f, mut cfg) = store_of(1 << 20);
        cfg.offset_sectors = 2000;
        cfg.len_sectors = Some(100);
        let msg = Backing::open(&cfg).unwrap_err().to_string();
        assert!(msg.contains(&*f.path().to_string_lossy()), "{msg}");
        assert!(msg.contains("100 sectors at offset 2000"), "{msg}");
        assert!(msg.contains("2048 sectors"), "{msg}");
        cfg.offset_sectors = 4096;
        cfg.len_sectors = None;
        let msg = Backing::open(&cfg).unwrap_err().to_string();
        assert!(msg.contains("offset 4096 sectors"), "{msg}");
        assert!(msg.contains("2048 sectors"), "{msg}");
    }

    #[test]
    fn errno_messages_say_what_to_do() {
        let path = PathBuf::from("/srv/aoe/disk0");
        let mut cfg = BackingConfig::new(&path);
        let cases = [
            (libc::EACCES, "open it read-only with -r"),
            (libc::EPERM, "open it read-only with -r"),
            (libc::EROFS, "open it read-only with -r"),
            (libc::EBUSY, "device busy: /srv/aoe/disk0 is in use (mounted, or opened exclusively by another process)"),
            (libc::EINVAL, "--buffered"),
            (libc::EIO, "cannot open backing store /srv/aoe/disk0"),
        ];
        for (errno, needle) in cases {
            let msg = open_error(&cfg, io::Error::from_raw_os_error(errno)).to_string();
            assert!(msg.contains("/srv/aoe/disk0"), "{errno}: {msg}");
            assert!(msg.contains(needle), "{errno}: {msg}");
        }
        // EINVAL in buffered mode is not about O_DIRECT.
        cfg.io = IoMode::Buffered;
        let e = open_error(&cfg, io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(e, BackingError::Io { .. }), "{e:?}");
    }
}
