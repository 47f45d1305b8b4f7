//! The bpf(2) link commands that aya 0.14 does not expose.
//!
//! - Create an XDP link and keep its fd: aya keeps its link fd private, so the only way it can
//!   detach is by closing that fd. The kernel detaches only when the *last* reference goes, and a
//!   process spawned concurrently (fork then exec, even with O_CLOEXEC) holds a copy until its
//!   exec. With our own fd, [`link_detach`] detaches synchronously on drop.
//! - Open a link by id, read an XDP link's interface, and detach it: needed to replace an XDP
//!   program that another process holds through a bpf_link (netlink cannot remove those: the
//!   kernel answers `EBUSY`).
//!
//! Layouts are from include/uapi/linux/bpf.h (`union bpf_attr`, `struct bpf_link_info`).

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
};

const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_GET_FD_BY_ID: u32 = 30;
const BPF_LINK_DETACH: u32 = 34;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u32 = 37;

/// A zeroed `union bpf_attr` prefix: every command below uses less, and the kernel requires
/// the unused rest to be zero.
type Attr = [u8; 64];
/// A `struct bpf_link_info` prefix: `type`, `id`, `prog_id` (byte 8), padding, then the union
/// whose `xdp.ifindex` is at byte 16.
type LinkInfo = [u8; 64];

enum Command<'a> {
    /// Program, ifindex, `XDP_FLAGS_*_MODE`.
    XdpLinkCreate(BorrowedFd<'a>, u32, u32),
    LinkGetFdById(u32),
    LinkInfo(BorrowedFd<'a>, &'a mut LinkInfo),
    LinkDetach(BorrowedFd<'a>),
}

/// Runs one command; the borrows in `cmd` keep every pointer handed to the kernel valid.
fn bpf(cmd: Command<'_>) -> io::Result<i64> {
    let mut attr: Attr = [0; 64];
    let code = match cmd {
        Command::XdpLinkCreate(prog, ifindex, flags) => {
            put(&mut attr, 0, &fd_u32(prog.as_raw_fd()).to_ne_bytes()); // link_create.prog_fd
            put(&mut attr, 4, &ifindex.to_ne_bytes()); // link_create.target_ifindex
            put(&mut attr, 8, &BPF_XDP.to_ne_bytes()); // link_create.attach_type
            put(&mut attr, 12, &flags.to_ne_bytes()); // link_create.flags
            BPF_LINK_CREATE
        }
        Command::LinkGetFdById(id) => {
            put(&mut attr, 0, &id.to_ne_bytes()); // link_id; next_id, open_flags stay zero
            BPF_LINK_GET_FD_BY_ID
        }
        Command::LinkInfo(fd, info) => {
            let len = u32::try_from(info.len()).expect("64 fits in u32");
            put(&mut attr, 0, &fd_u32(fd.as_raw_fd()).to_ne_bytes()); // info.bpf_fd
            put(&mut attr, 4, &len.to_ne_bytes()); // info.info_len
            put(&mut attr, 8, &(info.as_mut_ptr() as u64).to_ne_bytes()); // info.info
            BPF_OBJ_GET_INFO_BY_FD
        }
        Command::LinkDetach(fd) => {
            put(&mut attr, 0, &fd_u32(fd.as_raw_fd()).to_ne_bytes()); // link_detach.link_fd
            BPF_LINK_DETACH
        }
    };
    // SAFETY: `attr` is a live, zeroed buffer of the size passed; its only pointer is a `&mut
    // LinkInfo` borrowed for this call (kernel writes ≤ `info_len` bytes); the fds are borrowed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            code,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn put(attr: &mut Attr, at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn fd_u32(fd: RawFd) -> u32 {
    u32::try_from(fd).expect("a borrowed fd is never negative")
}

/// Attaches the XDP program `prog` to `ifindex` in the mode given by `mode_flag` (one
/// `XDP_FLAGS_*_MODE`) with a new bpf_link. Fails with `EINVAL` on kernels without XDP links
/// (before 5.9), with `EBUSY`/`EEXIST` when the interface already has an XDP program.
pub(crate) fn xdp_link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    mode_flag: u32,
) -> io::Result<OwnedFd> {
    new_fd(bpf(Command::XdpLinkCreate(prog, ifindex, mode_flag))?)
}

/// Opens the bpf_link with this id (needs CAP_SYS_ADMIN).
pub(crate) fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    new_fd(bpf(Command::LinkGetFdById(id))?)
}

/// Takes ownership of an fd that a bpf(2) command just created.
fn new_fd(ret: i64) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(ret)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bpf(2) returned a bad fd"))?;
    // SAFETY: only called with the result of a command that returns a new fd (LINK_CREATE,
    // LINK_GET_FD_BY_ID), which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program id and interface index of an XDP link (ifindex 0 once detached).
pub(crate) fn xdp_link_target(link: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut info: LinkInfo = [0; 64];
    bpf(Command::LinkInfo(link, &mut info))?;
    Ok((get_u32(&info, 8), get_u32(&info, 16)))
}

/// Detaches a link from its hook; the link object lives on, defunct, until its last fd closes.
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    bpf(Command::LinkDetach(link)).map(drop)
}
