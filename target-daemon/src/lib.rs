//! The xblade daemon as a library: configuration, backing stores, io_uring, workers.
//!
//! - [`config`]: the configuration model (CLI and TOML).
//! - [`backing`]: opening files and block devices (O_DIRECT, O_EXCL, alignment, sub-ranges).
//! - [`uring`]: the io_uring wrapper (registered files, UMEM as fixed buffers).
//! - [`export`]: an export at run time (backing + AoE state).
//! - [`worker`]: the per-queue run-to-completion loop.
//! - [`daemon`]: start-up, preflight and shutdown.
//! - [`sys`]: the few direct system calls, /proc and /sys.
//! - [`privilege`]: least privilege once serving: capabilities dropped, workers' seccomp filter.
pub mod backing;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod export;
pub mod import_vblade;
pub mod latency;
pub mod metrics;
pub mod notify;
pub mod persist;
pub mod privilege;
pub mod runtime;
pub mod services;
pub mod statefile;
pub mod status;
pub mod statview;
pub mod sys;
pub mod uring;
pub mod worker;
