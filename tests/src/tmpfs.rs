//! Real small file systems for disk-full tests: a tmpfs mounted on a temporary folder, and a
//! filler that uses up its space. Mounting needs root: the tests using it are
//! `#[ignore = "needs root …"]`, named `needs_root_…`, and run by `.ci/run` (as root) with
//! `-- --ignored needs_root`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted on a folder for the life of the guard (needs root).
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it) on `dir`.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {} failed (the disk-full test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy: detach it so that the temporary folder can go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes a filler file until the file system is full; returns its size.
pub fn fill(dir: &Path) -> u64 {
    let mut filler = std::fs::File::create(dir.join("filler")).expect("create the filler");
    let block = vec![0x55u8; 4096];
    let mut written = 0u64;
    loop {
        match filler.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    written
}
