//! The disk `vm-test --client ipxe` exports: a bootable 64 MiB image built from Debian
//! packages only, cached in `target/vm-cache/bootdisk-<key>/disk.img`.
//!
//! ```text
//! sector 0        MBR: syslinux's mbr.bin (syslinux-common), disk signature, one partition
//! sectors 2048..  partition 1 (type 0x83, active): ext2, label xbboot, holding
//!                   /vmlinuz        Debian's bzImage (the kernel the Linux VM test boots)
//!                   /initrd.img     busybox + virtio/ext4/aoe modules, /init = sanboot-init.sh
//!                   /extlinux.conf  boot /vmlinuz with /initrd.img at once, no prompt
//!                   /ldlinux.sys, /ldlinux.c32 and the partition's boot sector: extlinux
//! ```
//!
//! Built as root: `mkfs.ext2 -d` fills the file system on a loop device over the partition
//! (`losetup --offset`, since the host kernel may have no partition table parser), which is
//! mounted for `extlinux --install` (it needs a mounted file system and reads the partition's
//! offset, 2048 sectors, from the loop device) and unmounted again. The key hashes the guest's
//! inputs, the syslinux files and the boot configuration, so any change rebuilds the disk.

use std::{
    fs,
    hash::{Hash, Hasher},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};

use crate::cmd::CommandExt as _;

use super::{
    guest::{self, SanbootGuest},
    host::{LoopDevice, Mount},
};

/// syslinux's MBR boot code: finds the active partition and chains to its boot sector.
pub const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";
/// Installs the boot sector and `ldlinux.sys` on a mounted ext2/3/4, FAT or btrfs partition.
pub const EXTLINUX: &str = "/usr/bin/extlinux";
const DISK_MIB: u64 = 64;
/// Partition 1 starts at 1 MiB, as partitioning tools place it.
pub const PARTITION_START: u64 = 2048;
/// Bump when `build` changes what it produces.
const DISK_FORMAT: u32 = 1;
/// The geometry written in the partition entry's CHS fields (and told to extlinux). iPXE
/// guesses the INT 13h geometry from them; reads use LBA (EDD) anyway.
const HEADS: u64 = 255;
const SECTORS_PER_TRACK: u64 = 63;

/// The cached disk image and what the test checks against.
pub struct BootDisk {
    pub image: PathBuf,
    /// One line: sizes, kernel, syslinux.
    pub description: String,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    /// What the firmware reads through INT 13h besides the boot loader: kernel + initramfs.
    pub payload_bytes: u64,
}

impl BootDisk {
    /// The image's first `len` bytes from `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        read_at(&self.image, offset, len)
    }
}

/// The kernel command line the boot loader passes: `loglevel=4` is what `quiet` sets, spelled
/// out because syslinux says nothing while loading (no `Loading /vmlinuz... ok` lines, which
/// time the firmware's reads) when the command line holds the word `quiet`.
fn kernel_cmdline(shelf: u16, slot: u8) -> String {
    format!(
        "console=ttyS0 loglevel=4 panic=-1 xbvm.test=sanboot xbvm.shelf={shelf} \
         xbvm.slot={slot} xbvm.sectors={}",
        DISK_MIB << 11
    )
}

/// No prompt, no timeout, no menu: straight to the kernel.
fn extlinux_conf(shelf: u16, slot: u8) -> String {
    [
        "DEFAULT linux",
        "PROMPT 0",
        "TIMEOUT 0",
        "LABEL linux",
        "  LINUX /vmlinuz",
        "  INITRD /initrd.img",
        &format!("  APPEND {}", kernel_cmdline(shelf, slot)),
        "",
    ]
    .join("\n")
}

/// Returns the cached disk for AoE address `e<shelf>.<slot>`, building it if needed (root).
pub fn prepare(cache: &Path, guest: &SanbootGuest, shelf: u16, slot: u8) -> Result<BootDisk> {
    let mbr = fs::read(MBR_BIN)
        .with_context(|| format!("reading {MBR_BIN} (apt-get install syslinux-common)"))?;
    let extlinux = fs::read(EXTLINUX)
        .with_context(|| format!("reading {EXTLINUX} (apt-get install extlinux)"))?;
    let config = extlinux_conf(shelf, slot);
    let mut hasher = guest::Fnv::default();
    DISK_FORMAT.hash(&mut hasher);
    DISK_MIB.hash(&mut hasher);
    guest.dir.file_name().hash(&mut hasher);
    mbr.hash(&mut hasher);
    extlinux.hash(&mut hasher);
    config.hash(&mut hasher);
    let (dir, description) = guest::cached(
        cache,
        "bootdisk-",
        hasher.finish(),
        &["disk.img"],
        "the iPXE boot disk",
        |scratch| build(guest, &mbr, &config, scratch),
    )?;
    let manifest = fs::read_to_string(dir.join("manifest.txt"))?;
    let field = |key: &str| -> Result<String> {
        manifest
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .with_context(|| format!("{}: no {key}=", dir.join("manifest.txt").display()))
    };
    Ok(BootDisk {
        image: dir.join("disk.img"),
        description,
        kernel_sha256: field("vmlinuz_sha256")?,
        initrd_sha256: field("initrd_sha256")?,
        payload_bytes: field("payload_bytes")?.parse()?,
    })
}

/// Builds `out/disk.img`; returns the manifest (a description line, then `key=value` lines).
fn build(guest: &SanbootGuest, mbr_code: &[u8], config: &str, out: &Path) -> Result<String> {
    let image = out.join("disk.img");
    let size = DISK_MIB << 20;
    let sectors = size / 512;
    let file = fs::File::create(&image)?;
    file.set_len(size)?;
    file.write_all_at(&mbr(mbr_code, sectors)?, 0)?;
    drop(file);

    let root = out.join("root");
    fs::create_dir_all(&root)?;
    fs::copy(&guest.vmlinuz, root.join("vmlinuz"))?;
    fs::copy(&guest.initramfs, root.join("initrd.img"))?;
    fs::write(root.join("extlinux.conf"), config)?;
    {
        // Dropped in reverse: unmounted, then detached.
        let partition = LoopDevice::attach_range(
            &image,
            PARTITION_START * 512,
            (sectors - PARTITION_START) * 512,
        )?;
        Command::new("mkfs.ext2")
            .args(["-q", "-F", "-L", "xbboot", "-m", "0", "-d"])
            .arg(&root)
            .arg(&partition.path)
            .read()
            .map(drop)
            .context("mkfs.ext2 -d (apt-get install e2fsprogs)")?;
        let mount = Mount::new(&partition.path, &out.join("mnt"))?;
        Command::new(EXTLINUX)
            .args(["--install", "--heads", &HEADS.to_string()])
            .args(["--sectors", &SECTORS_PER_TRACK.to_string()])
            .arg(&mount.dir)
            .read()
            .map(drop)?;
    }
    let _ = fs::remove_dir(out.join("mnt"));

    // extlinux's boot sector finds ldlinux.sys by absolute LBA: the partition's offset, which
    // it took from the loop device, must be in it (the BPB's hidden-sectors field).
    let vbr = read_at(&image, PARTITION_START * 512, 512)?;
    ensure!(
        vbr[510..] == [0x55, 0xaa],
        "extlinux wrote no boot sector at sector {PARTITION_START}"
    );
    let hidden = u32::from_le_bytes(vbr[0x1c..0x20].try_into()?);
    ensure!(
        u64::from(hidden) == PARTITION_START,
        "extlinux recorded the partition at sector {hidden}, not {PARTITION_START}: it would \
         load ldlinux.sys from the wrong sectors"
    );
    let fsck = format!("{}?offset={}", image.display(), PARTITION_START * 512);
    Command::new("e2fsck")
        .args(["-fn", &fsck])
        .read()
        .map(drop)
        .context("the new boot partition is not clean")?;

    let sha256 = |path: &Path| -> Result<String> {
        let out = Command::new("sha256sum").arg(path).read()?;
        Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
    };
    let kernel_bytes = fs::metadata(root.join("vmlinuz"))?.len();
    let initrd_bytes = fs::metadata(root.join("initrd.img"))?.len();
    let syslinux = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "extlinux"])
        .read()
        .unwrap_or_else(|_| "?".to_owned());
    let manifest = format!(
        "{DISK_MIB} MiB, MBR + ext2 partition at sector {PARTITION_START} with extlinux \
         {syslinux}; vmlinuz {:.1} MiB + initramfs {:.1} MiB ({})\n\
         vmlinuz_sha256={}\ninitrd_sha256={}\npayload_bytes={}\nconfig:\n{config}",
        mib(kernel_bytes),
        mib(initrd_bytes),
        guest.description,
        sha256(&root.join("vmlinuz"))?,
        sha256(&root.join("initrd.img"))?,
        kernel_bytes + initrd_bytes,
    );
    fs::remove_dir_all(&root)?;
    Ok(manifest)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .read_exact_at(&mut bytes, offset)
        .with_context(|| format!("reading {len} bytes at {offset} of {}", path.display()))?;
    Ok(bytes)
}

/// Sector 0: the boot code, a disk signature, partition 1 (active, Linux, from
/// [`PARTITION_START`] to the end), the 0x55AA signature.
fn mbr(code: &[u8], disk_sectors: u64) -> Result<[u8; 512]> {
    ensure!(
        code.len() <= 440,
        "{MBR_BIN} has {} bytes; the MBR has room for 440",
        code.len()
    );
    let mut sector = [0; 512];
    sector[..code.len()].copy_from_slice(code);
    sector[440..444].copy_from_slice(b"xbld");
    let last = disk_sectors - 1;
    let entry = &mut sector[446..462];
    entry[0] = 0x80;
    entry[1..4].copy_from_slice(&chs(PARTITION_START));
    entry[4] = 0x83;
    entry[5..8].copy_from_slice(&chs(last));
    entry[8..12].copy_from_slice(&u32::try_from(PARTITION_START)?.to_le_bytes());
    entry[12..16].copy_from_slice(&u32::try_from(disk_sectors - PARTITION_START)?.to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xaa;
    Ok(sector)
}

/// A partition entry's (head, sector | cylinder high bits, cylinder low byte), or the
/// "use LBA" value beyond cylinder 1023.
fn chs(lba: u64) -> [u8; 3] {
    let cylinder = lba / (HEADS * SECTORS_PER_TRACK);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / SECTORS_PER_TRACK) % HEADS;
    let sector = lba % SECTORS_PER_TRACK + 1;
    [
        head as u8,
        sector as u8 | ((cylinder >> 2) as u8 & 0xc0),
        cylinder as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::{chs, mbr, PARTITION_START};

    #[test]
    fn partition_entry() {
        assert_eq!(chs(0), [0, 1, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(131_071), [40, 32, 8]);
        // Cylinder 300: its high bits ride in the sector byte.
        assert_eq!(chs(300 * 255 * 63), [0, 1 | 0x40, 44]);
        assert_eq!(chs(1024 * 255 * 63), [0xfe, 0xff, 0xff]);

        let sector = mbr(&[0xfa; 440], 131_072).unwrap();
        assert_eq!(&sector[..440], &[0xfa; 440]);
        assert_eq!(
            sector[446..462],
            [0x80, 32, 33, 0, 0x83, 40, 32, 8, 0, 8, 0, 0, 0, 0xf8, 1, 0]
        );
        assert_eq!(u64::from(sector[455]) << 8, PARTITION_START);
        assert_eq!(sector[462..510], [0; 48]);
        assert_eq!(sector[510..], [0x55, 0xaa]);
        assert!(mbr(&[0; 441], 131_072).is_err());
    }
}
