//! Thin syscall wrappers: owned mappings, socket options, errno with context.

use std::fmt::Display;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};

use crate::Result;

/// Transparent huge page size on x86_64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;
/// `MADV_POPULATE_WRITE` (Linux 5.14): fault the range in, writable.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// An owned memory mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mmap` is a unique owner of plain memory; it hands out only raw pointers, whose use is
// checked by the types built on top of it.
unsafe impl Send for Mmap {}
// SAFETY: as above; `&Mmap` only exposes the address and the length.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Private anonymous memory, pre-faulted and page-aligned. From 2 MiB up it is 2 MiB-aligned
    /// and asks for transparent huge pages (`MADV_HUGEPAGE`), so that frames picked at random
    /// from the fill ring do not each cost a TLB miss (a two-dimensional page walk under
    /// virtualisation); where the kernel gives none, it is ordinary 4 KiB memory.
    pub(crate) fn anonymous(len: usize) -> Result<Mmap> {
        if len < HUGE_PAGE {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
            return Self::map(-1, len, flags, 0);
        }
        // Reserve one huge page more than asked, keep the 2 MiB-aligned part.
        let over = Self::map(
            -1,
            len + HUGE_PAGE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            0,
        )?;
        let base = over.ptr() as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (start - base, base + over.len() - (start + len));
        std::mem::forget(over);
        // SAFETY: the head and tail lie inside the mapping just made, which nothing else uses;
        // the part kept stays mapped and is owned by the returned `Mmap` alone.
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        let ptr = NonNull::new(start as *mut u8).ok_or(io::ErrorKind::AddrNotAvailable)?;
        let map = Mmap { ptr, len };
        // SAFETY: advice and pre-faulting on our own fresh mapping change no contents (still
        // zero); a kernel without huge pages or MADV_POPULATE_WRITE refuses, which is fine.
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            if libc::madvise(start as *mut libc::c_void, len, MADV_POPULATE_WRITE) != 0 {
                for off in (0..len).step_by(4096) {
                    map.ptr().add(off).write_volatile(0);
                }
            }
        }
        Ok(map)
    }

    /// A kernel ring of the socket `fd` at page offset `pgoff` (one of `XDP_PGOFF_*`).
    pub(crate) fn ring(fd: RawFd, len: usize, pgoff: u64) -> Result<Mmap> {
        let off = libc::off_t::try_from(pgoff).map_err(|_| io::ErrorKind::InvalidInput)?;
        Self::map(fd, len, libc::MAP_SHARED | libc::MAP_POPULATE, off)
    }

    fn map(fd: RawFd, len: usize, flags: libc::c_int, off: libc::off_t) -> Result<Mmap> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) aliases no Rust object.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, fd, off) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(io::ErrorKind::AddrNotAvailable)?;
        Ok(Mmap { ptr, len })
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; everything borrowing it borrows `self`, so it is unused.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `setsockopt` with a plain value.
pub(crate) fn setsockopt<T>(fd: RawFd, level: i32, name: i32, val: &T) -> Result<()> {
    let len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is readable for `len` bytes; the kernel copies them and keeps no pointer.
    let rc = unsafe { libc::setsockopt(fd, level, name, ptr::from_ref(val).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt` into a zeroed `T`; returns the value and how many bytes the kernel wrote.
///
/// # Safety
/// Every bit pattern must be a valid `T` (a `repr(C)` struct of integers).
pub(crate) unsafe fn getsockopt<T>(fd: RawFd, level: i32, name: i32) -> Result<(T, usize)> {
    let mut val = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is writable for `len` bytes, and the kernel writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, level, name, val.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, then partly overwritten by the kernel; the caller guarantees
    // that any bytes form a valid `T`.
    Ok((unsafe { val.assume_init() }, len as usize))
}

/// Wraps an OS error with what we were doing and what the operator can do about it.
pub(crate) fn context(err: io::Error, what: impl Display, hint: impl Display) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}{hint}"))
}
