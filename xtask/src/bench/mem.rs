//! The memory side of the RAM rows: how long one core takes to copy a read request's data out
//! of the RAM image, from random places, as every RAM-backed target must (xblade copies from its
//! mapping of the image; vblade's `pread` copies from the page cache; a zero-copy scheme would
//! leave the same reads to the kernel's transmit copy). The echo ceiling reads no storage at
//! all, so on a machine whose memory is slow next to its packet path, a RAM target cannot come
//! near it: the report also shows `1 / (1 / echo IOPS + copy time)`, echo's time per frame plus
//! the copy on the same core, as the RAM read rows' bound (approximate: a target can overlap
//! some of its misses with packet work).

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::Path,
    ptr::NonNull,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// What one core's copies out of the image cost.
#[derive(Clone, Debug)]
pub struct MemCopy {
    /// Bytes per copy (one read request's data).
    pub bytes: usize,
    /// Wall-clock time per copy, averaged over the run.
    pub ns_per_copy: f64,
    pub copies: u64,
}

impl MemCopy {
    /// Copy rate in GB/s.
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.ns_per_copy
    }

    /// The most a target can answer `bytes`-sized reads at on one core whose packet path alone
    /// (the echo) answers `echo_iops`: echo's time per frame plus one copy.
    pub fn bound(&self, echo_iops: f64) -> f64 {
        1.0 / (1.0 / echo_iops + self.ns_per_copy * 1e-9)
    }
}

/// For each of `sizes` (bytes), the median of `rounds` runs of [`copy_loop`] of `time` each,
/// the sizes taken in turn so that drift spreads over all of them. One thread, pinned to
/// `cpu`, loads the image into memory once and runs them all.
pub fn measure(
    image: &Path,
    sizes: &[usize],
    rounds: usize,
    cpu: usize,
    time: Duration,
) -> Result<Vec<MemCopy>> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = usize::try_from(file.metadata()?.len())?;
    if let Some(&bytes) = sizes.iter().find(|&&b| b == 0 || len < 2 * b) {
        bail!(
            "{} ({len} bytes) is too small to copy {bytes}-byte blocks from",
            image.display()
        );
    }
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<MemCopy>> {
            pin(cpu)?;
            let map = Map::new(&file, len)
                .with_context(|| format!("copying the {len}-byte image to memory"))?;
            let mut runs: Vec<Vec<MemCopy>> = vec![Vec::new(); sizes.len()];
            for _ in 0..rounds.max(1) {
                for (i, &bytes) in sizes.iter().enumerate() {
                    runs[i].push(copy_loop(&map, bytes, time));
                }
            }
            Ok(runs
                .into_iter()
                .map(|mut r| {
                    r.sort_by(|a, b| a.ns_per_copy.total_cmp(&b.ns_per_copy));
                    r.swap_remove(r.len() / 2)
                })
                .collect())
        })
        .join()
        .unwrap_or_else(|_| bail!("the memory copy thread panicked"))
    })
}

/// Copies `bytes` from random sector-aligned places of `map` into a ring of 64 buffers (a
/// target's packet buffers) for `time`.
fn copy_loop(map: &Map, bytes: usize, time: Duration) -> MemCopy {
    const SLOTS: usize = 64;
    let stride = bytes.next_multiple_of(4096);
    let mut dst = vec![1u8; SLOTS * stride];
    let sectors = ((map.len - bytes) / 512) as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: cheap, and no pattern the prefetchers could follow.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % sectors) as usize * 512
    };
    // The copies are pipelined as well as a target could: each block is prefetched whole a
    // few blocks ahead (16 KiB ahead in all), so misses overlap and the loop runs at the
    // core's memory bandwidth rather than its latency. A bound must not be pessimistic.
    let ahead = (16384 / bytes).clamp(1, 16);
    let mut upcoming: Vec<usize> = (0..ahead).map(|_| next()).collect();
    for &o in &upcoming {
        map.prefetch(o, bytes);
    }
    let mut copies = 0u64;
    let start = Instant::now();
    loop {
        for i in 0..256 {
            let offset = upcoming[i % ahead];
            let later = next();
            map.prefetch(later, bytes);
            upcoming[i % ahead] = later;
            map.copy_to(offset, &mut dst[(i % SLOTS) * stride..][..bytes]);
        }
        copies += 256;
        let elapsed = start.elapsed();
        if elapsed >= time {
            std::hint::black_box(&dst);
            return MemCopy {
                bytes,
                ns_per_copy: elapsed.as_nanos() as f64 / copies as f64,
                copies,
            };
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes one bit inside it (`cpu` is
    // checked against its size); sched_setaffinity only reads the set we own.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            bail!("CPU {cpu} is beyond what a cpu_set_t holds");
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "pinning the memory copy to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// A copy of the whole image in anonymous memory on 2 MiB pages, as xblade's mapping of an
/// in-memory store is (it collapses the store's page cache into huge pages): random blocks on
/// 4 KiB pages would each miss the TLB, which under nested paging costs more than the copy, and
/// measure that instead of the memory. Where the kernel has no huge pages this is ordinary
/// memory, which only makes the bound more generous.
struct Map {
    base: NonNull<u8>,
    len: usize,
}

const HUGE: usize = 2 << 20;

impl Map {
    fn new(file: &File, len: usize) -> std::io::Result<Map> {
        // SAFETY: a fresh private anonymous mapping chosen by the kernel aliases nothing.
        let over = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + HUGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if over == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let at = (over as usize).next_multiple_of(HUGE);
        // SAFETY: the head and tail lie inside the mapping just made and outside the 2 MiB-
        // aligned `at..at + len` kept; the hint only changes how the kept part is backed.
        unsafe {
            if at > over as usize {
                libc::munmap(over, at - over as usize);
            }
            let end = over as usize + len + HUGE;
            if end > at + len {
                libc::munmap((at + len) as *mut libc::c_void, end - (at + len));
            }
            libc::madvise(at as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        let base = NonNull::new(at as *mut u8).ok_or(std::io::ErrorKind::AddrNotAvailable)?;
        let map = Map { base, len };
        // SAFETY: `at..at + len` is the mapping `map` owns, readable and writable, and no other
        // reference to it exists while this slice lives.
        let all = unsafe { std::slice::from_raw_parts_mut(base.as_ptr(), len) };
        file.read_exact_at(all, 0)?;
        Ok(map)
    }

    /// Asks the CPU to load `offset..offset + len` (a hint: never faults).
    fn prefetch(&self, offset: usize, len: usize) {
        let p = self.base.as_ptr().wrapping_add(offset);
        for line in (0..len.min(self.len - offset)).step_by(64) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 is a hint: it never faults and never changes memory.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(line).cast(),
                )
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (p, line);
        }
    }

    fn copy_to(&self, offset: usize, dst: &mut [u8]) {
        assert!(offset + dst.len() <= self.len, "copy beyond the mapping");
        // SAFETY: `offset..offset + dst.len()` lies inside the mapping (asserted), which lives
        // as long as `self`; `dst` is a distinct Rust buffer, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`, once; nothing borrows it now.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_from_a_file_and_bounds_the_echo() {
        let path = std::env::temp_dir().join(format!("xtask-mem-{}.img", std::process::id()));
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let ms = measure(&path, &[1024, 8192], 3, 0, Duration::from_millis(20)).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(ms.iter().map(|m| m.bytes).collect::<Vec<_>>(), [1024, 8192]);
        let m = &ms[1];
        assert!(m.copies >= 256 && m.ns_per_copy > 0.0, "{m:?}");
        assert!(m.gb_per_s() > 0.0);
        // Echo at 1 M/s is 1 µs per frame; a 1 µs copy halves it.
        let slow = MemCopy {
            bytes: 8192,
            ns_per_copy: 1000.0,
            copies: 1,
        };
        assert!((slow.bound(1e6) - 5e5).abs() < 1.0);
        let small = std::env::temp_dir().join(format!("xtask-mem-{}-s.img", std::process::id()));
        std::fs::write(&small, vec![0u8; 4096]).unwrap();
        let err = measure(&small, &[8192], 1, 0, Duration::ZERO).unwrap_err();
        std::fs::remove_file(&small).unwrap();
        assert!(format!("{err:#}").contains("too small"), "{err:#}");
    }
}
