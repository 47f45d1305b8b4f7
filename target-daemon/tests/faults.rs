//! Real storage faults the kernel can give us here, end to end: each becomes an answer to the
//! request that met it, and the daemon goes on serving the rest.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use aoe::ata;
use common::{pattern, privileged, Lab};

const MIB: u64 = 1 << 20;

/// A small ext4 filesystem on a loop device over a file in `dir`, mounted; undone on drop.
struct SmallExt4 {
    mnt: PathBuf,
    dev: String,
}

impl SmallExt4 {
    fn new(dir: &Path, mib: u64) -> SmallExt4 {
        let img = dir.join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&img));
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", &dev]));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        run(Command::new("mount").arg(&dev).arg(&mnt));
        SmallExt4 { mnt, dev }
    }
}

impl Drop for SmallExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A sparse image larger than its (ext4, so io_uring O_DIRECT) filesystem: writes into holes
/// succeed until the filesystem is full, then each gets an ATA error (ABRT: ENOSPC is not a
/// medium error) while reads, and writes over blocks already allocated, go on succeeding.
#[test]
fn a_full_filesystem_fails_those_writes_and_serves_the_rest() {
    if !privileged("a_full_filesystem_fails_those_writes_and_serves_the_rest") {
        return;
    }
    let lab = Lab::new();
    let fs = SmallExt4::new(&lab.dir, 16);
    let img = fs.mnt.join("sparse.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let d = lab.xblade(&["1", "0", "{if}", img.to_str().unwrap()]);
    assert!(d.log().contains("in_memory=false"), "{}", d.log());
    let mut c = lab.client();
    c.discover(1, 0);
    // One 1 KiB write per 16 KiB: each allocates a new block until none is left.
    let mut written = Vec::new();
    let mut failed = None;
    for i in 0..4096u64 {
        let lba = i * 32;
        let data = pattern(3, lba, 2);
        match c.write(lba, &data) {
            (ata::STATUS_OK, 0) => written.push(lba),
            other => {
                failed = Some((lba, other));
                break;
            }
        }
    }
    let (lba, (status, err)) = failed.expect("the 16 MiB filesystem never filled");
    assert_eq!(
        (status, err),
        (ata::STATUS_FAIL, ata::ERR_ABRT),
        "write at {lba}"
    );
    assert!(
        written.len() > 10,
        "{} writes before the fs filled",
        written.len()
    );
    // Everything written reads back; an allocated block can be overwritten; the daemon lives.
    for &lba in &written {
        let (s, e, data) = c.read(lba, 2);
        assert_eq!((s, e), (ata::STATUS_OK, 0), "read at {lba}");
        assert!(data == pattern(3, lba, 2), "data at {lba}");
    }
    let again = pattern(4, written[0], 2);
    assert_eq!(c.write(written[0], &again), (ata::STATUS_OK, 0));
    assert!(c.read(written[0], 2).2 == again);
    let (s, e) = c.write(lba, &pattern(5, lba, 2));
    assert_eq!((s, e), (ata::STATUS_FAIL, ata::ERR_ABRT), "still full");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("storage I/O failed"), "{log}");
}
