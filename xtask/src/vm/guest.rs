//! The guest image: Debian's kernel, a busybox initramfs and the test pattern.
//!
//! Downloads (with `apt-get download`, so the host's apt sources and proxy settings apply) go
//! to `target/vm-cache/debs/`, named by package and version, and are never fetched twice. The
//! built kernel + initramfs go to `target/vm-cache/guest-<key>/`, where the key hashes every
//! input (package versions, `xtask/vm/init.sh`, the module list, the host's e2fsprogs files),
//! so a second run reuses them and an edit to `init.sh` rebuilds them.
//!
//! The initramfs is a gzipped `newc` cpio written here (no `cpio` tool needed):
//!
//! ```text
//! /init                       xtask/vm/init.sh
//! /bin/busybox                from busybox-static (init.sh installs the applet links)
//! /lib/modules/*.ko           virtio_pci, virtio_net, ext4, crc32c_generic, aoe and their
//!                             `depends=` closure, decompressed; load-order lists them
//! /opt/e2fsprogs/{mke2fs,e2fsck} + their shared libraries at the paths `ldd` gives
//! /dev/console                so init has a console before devtmpfs is mounted
//! ```
//!
//! Each run appends an uncompressed cpio segment holding `/pattern.bin` (random bytes) to a
//! copy of it; the kernel unpacks concatenated segments in order.
//!
//! `vm-test --client ipxe` has its own guest, from the same two packages, in
//! `target/vm-cache/sanboot-guest-<key>/` ([`prepare_sanboot`]): Debian's bzImage as shipped
//! (`vmlinuz`, for the boot loader), and an initramfs like the one above with
//! `xtask/src/vm/sanboot-init.sh` as `/init` and no e2fsprogs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    hash::{Hash, Hasher},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::cmd::CommandExt as _;

/// The Debian metapackage that names the current kernel package.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "busybox-static";
/// Modules the guest loads before `aoe`, plus their dependencies. (`crc32c` is a soft
/// dependency of ext4/jbd2 that `depends=` does not list; the guest has no modprobe.)
const GUEST_MODULES: &[&str] = &["virtio_pci", "virtio_net", "crc32c_generic", "ext4"];
/// Loaded by init.sh itself, after eth0 is up.
const AOE_MODULE: &str = "aoe";
/// Bump when `build` changes what it puts in the image, to invalidate cached images.
const IMAGE_FORMAT: u32 = 2;
/// Host tools carried into the guest with their libraries.
const E2FSPROGS: &[&str] = &["mke2fs", "e2fsck"];

/// A bootable guest: kernel image and base initramfs.
pub struct GuestImage {
    /// The uncompressed ELF `vmlinux` when the kernel supports PVH boot (qemu then loads it
    /// directly, which saves the ~2.5 s of xz decompression under TCG), else the bzImage.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// `6.1.0-56-amd64 (linux-image-6.1.0-56-amd64 6.1.192-2), busybox 1:1.35.0-...`
    pub description: String,
}

/// A Debian package pinned to a version.
struct Package {
    name: String,
    version: String,
}

impl Package {
    fn file_stem(&self) -> String {
        format!("{}_{}", self.name, self.version.replace(':', "%3a"))
    }
}

/// Returns the cached guest image, building (and downloading) what is missing.
pub fn prepare(cache: &Path, project_root: &Path) -> Result<GuestImage> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;

    let kernel = resolve_kernel_package(&debs)?;
    let busybox = resolve_package(BUSYBOX, &debs)?;
    let init_path = project_root.join("xtask/vm/init.sh");
    let init = fs::read(&init_path).with_context(|| format!("reading {}", init_path.display()))?;
    let host_files = e2fsprogs_files()?;

    let mut hasher = Fnv::default();
    IMAGE_FORMAT.hash(&mut hasher);
    kernel.file_stem().hash(&mut hasher);
    busybox.file_stem().hash(&mut hasher);
    init.hash(&mut hasher);
    GUEST_MODULES.hash(&mut hasher);
    AOE_MODULE.hash(&mut hasher);
    for (guest_path, host_path) in &host_files {
        guest_path.hash(&mut hasher);
        fs::read(host_path)
            .with_context(|| format!("reading {}", host_path.display()))?
            .hash(&mut hasher);
    }
    let (dir, description) = cached(
        cache,
        "guest-",
        hasher.finish(),
        &["kernel", "initramfs.cpio.gz"],
        "the guest image",
        |scratch| build(&kernel, &busybox, &debs, &init, &host_files, scratch),
    )?;
    Ok(GuestImage {
        kernel: dir.join("kernel"),
        initramfs: dir.join("initramfs.cpio.gz"),
        description,
    })
}

/// What `vm-test --client ipxe` puts on the disk it exports: Debian's kernel as the bzImage a
/// boot loader loads, and a small initramfs whose `/init` is `xtask/src/vm/sanboot-init.sh`.
pub struct SanbootGuest {
    /// Holds `vmlinuz` and `initramfs.cpio.gz`; its name is a hash of every input.
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// `kernel 6.1.0-57-amd64 (...), busybox-static ...`
    pub description: String,
}

/// Where the `/init` of the sanboot guest lives, from the project root.
pub const SANBOOT_INIT: &str = "xtask/src/vm/sanboot-init.sh";
/// Bump when `build_sanboot` changes what it produces.
const SANBOOT_FORMAT: u32 = 1;

/// Returns the cached sanboot guest (kernel + initramfs), building what is missing. Uses the
/// same two Debian packages as [`prepare`], so nothing new is downloaded.
pub fn prepare_sanboot(cache: &Path, project_root: &Path) -> Result<SanbootGuest> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let kernel = resolve_kernel_package(&debs)?;
    let busybox = resolve_package(BUSYBOX, &debs)?;
    let init_path = project_root.join(SANBOOT_INIT);
    let init = fs::read(&init_path).with_context(|| format!("reading {}", init_path.display()))?;

    let mut hasher = Fnv::default();
    SANBOOT_FORMAT.hash(&mut hasher);
    kernel.file_stem().hash(&mut hasher);
    busybox.file_stem().hash(&mut hasher);
    init.hash(&mut hasher);
    GUEST_MODULES.hash(&mut hasher);
    AOE_MODULE.hash(&mut hasher);
    let (dir, description) = cached(
        cache,
        "sanboot-guest-",
        hasher.finish(),
        &["vmlinuz", "initramfs.cpio.gz"],
        "the sanboot guest",
        |scratch| build_sanboot(&kernel, &busybox, &debs, &init, scratch),
    )?;
    Ok(SanbootGuest {
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        dir,
        description,
    })
}

/// The directory `<cache>/<prefix><key>` holding `files` and a `manifest.txt` whose first line
/// describes it: reused when complete, else built by `build` (which returns the manifest) in a
/// scratch directory renamed into place. Other `<prefix>*` directories are deleted.
pub(super) fn cached(
    cache: &Path,
    prefix: &str,
    key: u64,
    files: &[&str],
    what: &str,
    build: impl FnOnce(&Path) -> Result<String>,
) -> Result<(PathBuf, String)> {
    let dir = cache.join(format!("{prefix}{key:016x}"));
    if let Ok(manifest) = fs::read_to_string(dir.join("manifest.txt")) {
        if files.iter().all(|file| dir.join(file).exists()) {
            let description = manifest.lines().next().unwrap_or_default().to_owned();
            return Ok((dir, description));
        }
    }

    eprintln!("vm-test: building {what} in {}", dir.display());
    let scratch = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let built = match build(&scratch) {
        Ok(built) => built,
        Err(error) => {
            let _ = fs::remove_dir_all(&scratch);
            return Err(error);
        }
    };
    let _ = fs::remove_dir_all(scratch.join("unpacked"));
    fs::write(scratch.join("manifest.txt"), &built)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&scratch, &dir).with_context(|| format!("renaming into {}", dir.display()))?;
    // Older builds (other keys) are dead weight: ~70 MB each for the guest image.
    for name in read_dir_names(cache)? {
        if name.starts_with(prefix) && !name.ends_with(".tmp") && cache.join(&name) != dir {
            let _ = fs::remove_dir_all(cache.join(name));
        }
    }
    let description = built.lines().next().unwrap_or_default().to_owned();
    Ok((dir, description))
}

/// The kernel and busybox packages unpacked under `out/unpacked`.
struct Unpacked {
    kernel_root: PathBuf,
    busybox_root: PathBuf,
    kernel_version: String,
}

impl Unpacked {
    fn new(kernel: &Package, busybox: &Package, debs: &Path, out: &Path) -> Result<Self> {
        let unpacked = out.join("unpacked");
        let kernel_root = unpacked.join("kernel");
        let busybox_root = unpacked.join("busybox");
        extract(
            &debs.join(format!("{}_amd64.deb", kernel.file_stem())),
            &kernel_root,
        )?;
        extract(
            &debs.join(format!("{}_amd64.deb", busybox.file_stem())),
            &busybox_root,
        )?;
        let versions: Vec<_> = read_dir_names(&kernel_root.join("lib/modules"))?;
        let [kernel_version] = versions.as_slice() else {
            bail!(
                "expected one kernel under {}, found {versions:?}",
                kernel_root.join("lib/modules").display()
            );
        };
        Ok(Unpacked {
            kernel_version: kernel_version.clone(),
            kernel_root,
            busybox_root,
        })
    }

    fn module_dir(&self) -> PathBuf {
        self.kernel_root
            .join("lib/modules")
            .join(&self.kernel_version)
    }

    fn vmlinuz(&self) -> PathBuf {
        self.kernel_root
            .join(format!("boot/vmlinuz-{}", self.kernel_version))
    }

    /// An initramfs with `/init`, busybox, [`GUEST_MODULES`] (and their dependencies, listed
    /// in `lib/modules/load-order`) and `aoe.ko`. Returns it and the load order.
    fn initramfs(&self, init: &[u8]) -> Result<(Cpio, Vec<String>)> {
        let module_dir = self.module_dir();
        let modules = ModuleSet::resolve(&module_dir, GUEST_MODULES)?;
        let aoe = ModuleSet::resolve(&module_dir, &[AOE_MODULE])?;
        let aoe_deps: Vec<_> = aoe
            .order
            .iter()
            .filter(|name| name.as_str() != AOE_MODULE)
            .collect();
        ensure!(
            aoe_deps.is_empty(),
            "aoe.ko has dependencies {aoe_deps:?}; teach init.sh to load them"
        );
        ensure!(
            aoe.order.iter().any(|name| name == AOE_MODULE),
            "this kernel has aoe built in; init.sh expects a module"
        );

        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, init)?;
        cpio.char_device("dev/console", 0o600, 5, 1)?;
        for dir in ["proc", "sys", "tmp", "mnt", "etc", "root"] {
            cpio.dir(dir)?;
        }
        let busybox_bin = self.busybox_root.join("bin/busybox");
        cpio.file(
            "bin/busybox",
            0o755,
            &fs::read(&busybox_bin)
                .with_context(|| format!("reading {}", busybox_bin.display()))?,
        )?;
        for (name, bytes) in modules.bytes.iter().chain(&aoe.bytes) {
            cpio.file(&format!("lib/modules/{name}.ko"), 0o644, bytes)?;
        }
        let load_order: String = modules
            .order
            .iter()
            .map(|name| format!("{name}\n"))
            .collect();
        cpio.file("lib/modules/load-order", 0o644, load_order.as_bytes())?;
        Ok((cpio, modules.order))
    }
}

/// Writes `cpio` gzipped to `out/initramfs.cpio.gz`.
fn write_gzipped(cpio: Cpio, out: &Path) -> Result<()> {
    let cpio_path = out.join("initramfs.cpio");
    fs::write(&cpio_path, cpio.finish())?;
    Command::new("gzip")
        .args(["-n", "-6", "-f"])
        .arg(&cpio_path)
        .read()
        .map(drop)
}

/// Builds `kernel` and `initramfs.cpio.gz` in `out`; returns the manifest text.
fn build(
    kernel: &Package,
    busybox: &Package,
    debs: &Path,
    init: &[u8],
    host_files: &[(String, PathBuf)],
    out: &Path,
) -> Result<String> {
    let unpacked = Unpacked::new(kernel, busybox, debs, out)?;
    let kernel_version = &unpacked.kernel_version;
    let vmlinuz = unpacked.vmlinuz();
    let config = fs::read_to_string(
        unpacked
            .kernel_root
            .join(format!("boot/config-{kernel_version}")),
    )
    .unwrap_or_default();
    let kernel_image = out.join("kernel");
    let boot_note = if config.lines().any(|line| line == "CONFIG_PVH=y")
        && extract_vmlinux(&vmlinuz, &kernel_image, out)?
    {
        "booted as PVH vmlinux (no decompression under TCG)"
    } else {
        fs::copy(&vmlinuz, &kernel_image)
            .with_context(|| format!("copying {}", vmlinuz.display()))?;
        "booted as bzImage"
    };

    let (mut cpio, modules) = unpacked.initramfs(init)?;
    for (guest_path, host_path) in host_files {
        let bytes =
            fs::read(host_path).with_context(|| format!("reading {}", host_path.display()))?;
        cpio.file(guest_path.trim_start_matches('/'), 0o755, &bytes)?;
    }
    write_gzipped(cpio, out)?;

    let mut manifest = format!(
        "kernel {kernel_version} ({} {}, {boot_note}), {} {}\n",
        kernel.name, kernel.version, busybox.name, busybox.version
    );
    manifest += &format!("modules: {} (then {AOE_MODULE})\n", modules.join(" "));
    for (guest_path, host_path) in host_files {
        manifest += &format!("{guest_path} <- {}\n", host_path.display());
    }
    Ok(manifest)
}

/// Builds `vmlinuz` (the bzImage as Debian ships it) and `initramfs.cpio.gz` (init, busybox,
/// modules; no e2fsprogs) in `out`; returns the manifest text.
fn build_sanboot(
    kernel: &Package,
    busybox: &Package,
    debs: &Path,
    init: &[u8],
    out: &Path,
) -> Result<String> {
    let unpacked = Unpacked::new(kernel, busybox, debs, out)?;
    let vmlinuz = unpacked.vmlinuz();
    fs::copy(&vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;
    let (cpio, modules) = unpacked.initramfs(init)?;
    write_gzipped(cpio, out)?;
    Ok(format!(
        "kernel {} ({} {}, bzImage), {} {}\nmodules: {} (then {AOE_MODULE})\n",
        unpacked.kernel_version,
        kernel.name,
        kernel.version,
        busybox.name,
        busybox.version,
        modules.join(" ")
    ))
}

/// Writes the ELF kernel inside a bzImage to `out`; false if there is none to be found.
fn extract_vmlinux(bzimage: &Path, out: &Path, scratch: &Path) -> Result<bool> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let formats: [(&[u8], &str, &[&str]); 3] = [
        (b"\xfd7zXZ\0", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dc"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    ];
    let payload = scratch.join("payload");
    for (magic, tool, args) in formats {
        let Some(start) = image
            .windows(magic.len())
            .position(|window| window == magic)
        else {
            continue;
        };
        fs::write(&payload, &image[start..])?;
        // Trailing data after the stream makes some tools complain (and exit non-zero); the
        // ELF magic decides.
        let output = Command::new(tool).args(args).arg(&payload).capture();
        let _ = fs::remove_file(&payload);
        if let Ok(output) = output {
            if output.stdout.starts_with(b"\x7fELF") {
                fs::write(out, &output.stdout)?;
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Appends a cpio segment with `/pattern.bin` to the base initramfs, into `out`.
pub fn initrd_with_pattern(base: &Path, pattern: &[u8], out: &Path) -> Result<()> {
    let mut bytes = fs::read(base).with_context(|| format!("reading {}", base.display()))?;
    // The kernel looks for the next segment's cpio magic on a 4-byte boundary and skips zeros.
    bytes.resize(bytes.len().next_multiple_of(512), 0);
    let mut cpio = Cpio::default();
    cpio.file("pattern.bin", 0o644, pattern)?;
    bytes.extend_from_slice(&cpio.finish());
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}

fn resolve_kernel_package(debs: &Path) -> Result<Package> {
    if let Some(package) = apt_candidate(KERNEL_META)? {
        // "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
        let depends = package.1.unwrap_or_default();
        let first = depends.split(',').next().unwrap_or_default().trim();
        let (name, version) = first
            .split_once(" (= ")
            .and_then(|(name, rest)| Some((name.trim(), rest.strip_suffix(')')?)))
            .with_context(|| {
                format!("cannot read the kernel package from `Depends: {depends}` of {KERNEL_META}")
            })?;
        let package = Package {
            name: name.to_owned(),
            version: version.to_owned(),
        };
        download(&package, debs)?;
        return Ok(package);
    }
    cached_package("linux-image-", debs)
}

fn resolve_package(name: &str, debs: &Path) -> Result<Package> {
    if let Some((version, _)) = apt_candidate(name)? {
        let package = Package {
            name: name.to_owned(),
            version,
        };
        download(&package, debs)?;
        return Ok(package);
    }
    cached_package(&format!("{name}_"), debs)
}

/// `apt-cache show`'s candidate version and Depends, or `None` when apt knows no such package
/// (no `apt-get update` yet, or not a Debian host).
fn apt_candidate(name: &str) -> Result<Option<(String, Option<String>)>> {
    let Ok(text) = Command::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .read()
    else {
        return Ok(None);
    };
    let field = |key: &str| {
        text.lines()
            .take_while(|line| !line.is_empty())
            .find_map(|line| line.strip_prefix(key).map(|value| value.trim().to_owned()))
    };
    Ok(field("Version:").map(|version| (version, field("Depends:"))))
}

/// Offline fallback: the newest cached .deb whose name starts with `prefix`.
fn cached_package(prefix: &str, debs: &Path) -> Result<Package> {
    let newest = read_dir_names(debs)?
        .into_iter()
        .filter(|name| {
            name.starts_with(prefix)
                && name.ends_with("_amd64.deb")
                && !name.starts_with(KERNEL_META)
        })
        .max_by_key(|name| {
            fs::metadata(debs.join(name))
                .and_then(|meta| meta.modified())
                .ok()
        });
    let Some(file) = newest else {
        bail!(
            "apt does not know `{}` and nothing is cached in {}: run `apt-get update` first",
            prefix.trim_end_matches(['_', '-']),
            debs.display()
        );
    };
    let stem = file.trim_end_matches("_amd64.deb");
    let (name, version) = stem.split_once('_').context("odd .deb name")?;
    eprintln!("vm-test: apt cannot resolve {prefix}*, using the cached {file}");
    Ok(Package {
        name: name.to_owned(),
        version: version.replace("%3a", ":"),
    })
}

fn download(package: &Package, debs: &Path) -> Result<()> {
    let deb = debs.join(format!("{}_amd64.deb", package.file_stem()));
    if deb.exists() {
        return Ok(());
    }
    eprintln!(
        "vm-test: apt-get download {}={}",
        package.name, package.version
    );
    Command::new("apt-get")
        .args(["download", "-q"])
        .arg(format!("{}={}", package.name, package.version))
        .current_dir(debs)
        .read()
        .map(drop)
        .with_context(|| format!("downloading {} (try `apt-get update`)", package.name))?;
    ensure!(
        deb.exists(),
        "apt-get download did not produce {}",
        deb.display()
    );
    Ok(())
}

fn extract(deb: &Path, into: &Path) -> Result<()> {
    fs::create_dir_all(into)?;
    Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(into)
        .read()
        .map(drop)
}

/// The host's e2fsprogs binaries and their libraries: (path in the guest, path on the host).
fn e2fsprogs_files() -> Result<Vec<(String, PathBuf)>> {
    let mut files = BTreeMap::new();
    for tool in E2FSPROGS {
        let host = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|path| path.exists())
            .with_context(|| format!("{tool} not found on the host (apt-get install e2fsprogs)"))?;
        files.insert(format!("/opt/e2fsprogs/{tool}"), host.clone());
        let ldd = Command::new("ldd").arg(&host).read()?;
        for line in ldd.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line.trim(),
            };
            let path = path.split_whitespace().next().unwrap_or_default();
            if path.starts_with('/') {
                files.insert(path.to_owned(), fs::canonicalize(path)?);
            }
        }
    }
    if Path::new("/etc/mke2fs.conf").exists() {
        files.insert(
            "/etc/mke2fs.conf".to_owned(),
            PathBuf::from("/etc/mke2fs.conf"),
        );
    }
    Ok(files.into_iter().collect())
}

/// Kernel modules in load order with their (decompressed) bytes.
struct ModuleSet {
    order: Vec<String>,
    bytes: BTreeMap<String, Vec<u8>>,
}

impl ModuleSet {
    /// `wanted` and everything they `depends=` on, dependencies first. Built-in modules
    /// (listed in `modules.builtin`) are skipped.
    fn resolve(module_dir: &Path, wanted: &[&str]) -> Result<Self> {
        let mut files = BTreeMap::new();
        index_modules(&module_dir.join("kernel"), &mut files)?;
        let builtin: BTreeSet<String> = fs::read_to_string(module_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.rsplit('/').next())
            .map(|file| normalize(file.trim_end_matches(".ko")))
            .collect();
        let mut set = ModuleSet {
            order: Vec::new(),
            bytes: BTreeMap::new(),
        };
        for name in wanted {
            set.visit(&normalize(name), &files, &builtin, &mut Vec::new())?;
        }
        Ok(set)
    }

    fn visit(
        &mut self,
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if self.bytes.contains_key(name) {
            return Ok(());
        }
        ensure!(
            !stack.iter().any(|seen| seen == name),
            "module dependency cycle: {stack:?} -> {name}"
        );
        let Some(path) = files.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            bail!("module {name} is neither a file nor built in");
        };
        let bytes = read_module(path)?;
        stack.push(name.to_owned());
        for dependency in modinfo_depends(&bytes) {
            self.visit(&normalize(&dependency), files, builtin, stack)?;
        }
        stack.pop();
        self.order.push(name.to_owned());
        self.bytes.insert(name.to_owned(), bytes);
        Ok(())
    }
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(file) = path.file_name().and_then(|name| name.to_str()) {
            for suffix in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                if let Some(stem) = file.strip_suffix(suffix) {
                    files.insert(normalize(stem), path.clone());
                }
            }
        }
    }
    Ok(())
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    Command::new(tool).arg("-dc").arg(path).read_bytes()
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated `key=value` strings).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    module
        .windows(KEY.len())
        .position(|window| window == KEY)
        .map(|start| {
            let value = &module[start + KEY.len()..];
            let end = value
                .iter()
                .position(|&byte| byte == 0)
                .unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end])
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// A `newc` cpio archive in memory, parents created before children, mtimes 0.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn dir(&mut self, path: &str) -> Result<()> {
        self.parents(path)?;
        if self.dirs.insert(path.to_owned()) {
            self.entry(path, 0o040_755, (0, 0), &[])?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, permissions: u32, data: &[u8]) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o100_000 | permissions, (0, 0), data)
    }

    fn char_device(&mut self, path: &str, permissions: u32, major: u32, minor: u32) -> Result<()> {
        self.parents(path)?;
        self.entry(path, 0o020_000 | permissions, (major, minor), &[])
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        self.inode += 1;
        let size = u32::try_from(data.len()).context("cpio member over 4 GiB")?;
        let name_size = u32::try_from(name.len() + 1).context("cpio name too long")?;
        let fields = [
            self.inode, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        write!(self.bytes, "070701")?;
        for field in fields {
            write!(self.bytes, "{field:08X}")?;
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        let _ = self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes.resize(self.bytes.len().next_multiple_of(512), 0);
        self.bytes
    }
}

/// FNV-1a: a hash that, unlike `DefaultHasher`, is the same in every build (cache keys).
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
