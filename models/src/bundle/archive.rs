//! The bundle's container: a POSIX (ustar) tar archive written deterministically.
//!
//! This module owns the bytes on disk: it writes entries in the order given with fixed metadata
//! (mtime 0, uid and gid 0, mode 0644, no user names), so the same parts always give the same
//! file, and it reads an archive back with limits on entry count, entry size and entry names.
//! It knows nothing of what the entries mean; [`super::Bundle`] does.

use std::io::{Cursor, Read};

use tar::{Archive, Builder, EntryType, Header};

use super::BundleError;

/// Most entries a bundle may hold (manifest, model and golden samples).
pub const MAX_ENTRIES: usize = 256;

/// Largest single entry accepted, in bytes.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// Writes `entries` (path, content) as a deterministic tar archive.
pub fn write(entries: &[(String, &[u8])]) -> Result<Vec<u8>, BundleError> {
    let mut builder = Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header
            .set_path(path)
            .map_err(|source| write_error(format!("entry {path}"), source))?;
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder
            .append(&header, *data)
            .map_err(|source| write_error(format!("entry {path}"), source))?;
    }
    builder
        .into_inner()
        .map_err(|source| write_error("the archive's end".to_owned(), source))
}

fn write_error(part: String, source: std::io::Error) -> BundleError {
    BundleError::Write { part, source }
}

fn unreadable(part: String) -> impl FnOnce(std::io::Error) -> BundleError {
    move |source| BundleError::Unreadable { part, source }
}

/// Reads every entry of a tar archive held in memory, in archive order.
///
/// Refuses anything but regular files with plain relative names, duplicate names, more than
/// [`MAX_ENTRIES`] entries, entries over [`MAX_ENTRY_BYTES`], and truncated archives.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    if bytes.len() < 1024 || !bytes.len().is_multiple_of(512) {
        return Err(BundleError::NotABundle(format!(
            "{} bytes is not a whole tar archive (truncated, or another kind of file)",
            bytes.len()
        )));
    }
    let mut archive = Archive::new(Cursor::new(bytes));
    let entries = archive
        .entries()
        .map_err(unreadable("its list of entries".to_owned()))?;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(unreadable(format!("entry {}", out.len() + 1)))?;
        let path = entry
            .path()
            .map_err(unreadable(format!("the name of entry {}", out.len() + 1)))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != EntryType::Regular {
            return Err(BundleError::UnexpectedEntry(path));
        }
        if !is_plain_relative(&path) {
            return Err(BundleError::UnexpectedEntry(path));
        }
        let size = entry
            .header()
            .size()
            .map_err(unreadable(format!("the size of entry {path}")))?;
        if size > MAX_ENTRY_BYTES {
            return Err(BundleError::NotABundle(format!(
                "entry {path} claims {size} bytes, more than {MAX_ENTRY_BYTES}"
            )));
        }
        if out.len() >= MAX_ENTRIES {
            return Err(BundleError::NotABundle(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        if out.iter().any(|(p, _)| *p == path) {
            return Err(BundleError::NotABundle(format!(
                "entry {path} appears twice"
            )));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry
            .read_to_end(&mut data)
            .map_err(unreadable(format!("entry {path}, cut short")))?;
        if data.len() as u64 != size {
            return Err(BundleError::NotABundle(format!(
                "entry {path} is cut short: {} of {size} bytes",
                data.len()
            )));
        }
        out.push((path, data));
    }
    if out.is_empty() {
        return Err(BundleError::NotABundle("the archive is empty".into()));
    }
    Ok(out)
}

/// True for names like `model.onnx` or `golden/a.png`: relative, no `..`, no empty parts.
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_identical_bytes_for_identical_entries() {
        let entries = vec![
            ("a.txt".to_owned(), &b"alpha"[..]),
            ("golden/b".to_owned(), &b"beta"[..]),
        ];
        let first = write(&entries).expect("write");
        let second = write(&entries).expect("write");
        assert_eq!(first, second);
        let back = read(&first).expect("read");
        assert_eq!(back[0], ("a.txt".to_owned(), b"alpha".to_vec()));
        assert_eq!(back[1], ("golden/b".to_owned(), b"beta".to_vec()));
    }

    #[test]
    fn truncated_archive_is_refused() {
        let bytes = write(&[("model.onnx".to_owned(), &[7u8; 4000][..])]).expect("write");
        // Cuts inside the header or the data; the trailing zero blocks carry nothing.
        for cut in [0, 100, 512, 1024, 2048, 4096] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn path_traversal_is_refused() {
        assert!(!is_plain_relative("../etc/passwd"));
        assert!(!is_plain_relative("/abs"));
        assert!(!is_plain_relative("golden//x"));
        assert!(is_plain_relative("golden/x.png"));
    }
}
