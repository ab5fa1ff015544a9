//! Checks of `data.mdb` made before LMDB maps it. LMDB trusts its file: a
//! file shorter than the pages its last commit uses makes the map fault
//! (SIGBUS) on the first read past the end, and an emptied or deleted file
//! opens as a new, empty database. Neither may happen silently: a node
//! that serves "not found" for data it had is worse than one that does not
//! start.
//!
//! The layout read here is LMDB's: two meta pages at the start of the file,
//! each a 16-byte page header followed by `MDB_meta` (magic, version,
//! address, map size, two `MDB_db` records of 48 bytes, the last page used,
//! the transaction id); the page size is kept in the first record's pad.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The file a data directory holds once it has been opened; its presence
/// says that `data.mdb` held a database.
pub const MARKER: &str = "kvs.id";

const MDB_MAGIC: u32 = 0xBEEF_C0DE;
const PAGE_HEADER: usize = 16;
const MIN_PAGE: usize = 512;
const MAX_PAGE: usize = 64 * 1024;

/// What one meta page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    page_size: u64,
    last_page: u64,
    txn_id: u64,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the meta record at `offset`, if it is one.
fn meta_at(bytes: &[u8], offset: usize) -> Option<Meta> {
    let m = offset + PAGE_HEADER;
    if u32_at(bytes, m)? != MDB_MAGIC {
        return None;
    }
    let page_size = u32_at(bytes, m + 24)? as u64;
    Some(Meta {
        page_size,
        last_page: u64_at(bytes, m + 24 + 96)?,
        txn_id: u64_at(bytes, m + 24 + 96 + 8)?,
    })
}

/// The newest valid meta among the two at the head of the file.
fn newest_meta(head: &[u8]) -> Option<Meta> {
    let first = meta_at(head, 0)?;
    if !(MIN_PAGE as u64..=MAX_PAGE as u64).contains(&first.page_size) {
        return None;
    }
    let second = meta_at(head, first.page_size as usize);
    Some(match second {
        Some(s) if s.txn_id > first.txn_id => s,
        _ => first,
    })
}

/// Why a data file must not be opened: one line for the operator.
fn check(dir: &Path, len: Option<u64>, head: &[u8]) -> Result<(), String> {
    let file = dir.join("data.mdb");
    let held_data = dir.join(MARKER).exists();
    match len {
        None | Some(0) if held_data => {
            return Err(format!(
                "data_dir: {} held a database ({} is there) but {} is {}: restore it from a \
                 backup, or remove {} to start this node with no data",
                dir.display(),
                MARKER,
                file.display(),
                if len.is_none() { "missing" } else { "empty" },
                MARKER
            ))
        }
        None | Some(0) => return Ok(()),
        Some(_) => {}
    }
    let len = len.unwrap_or(0);
    let Some(meta) = newest_meta(head) else {
        return Err(format!(
            "data_dir: {} is not an LMDB database (no valid meta page): restore it from a backup",
            file.display()
        ));
    };
    let needed = (meta.last_page + 1).saturating_mul(meta.page_size);
    if len < needed {
        return Err(format!(
            "data_dir: {} is {len} bytes, shorter than the {needed} bytes its last commit uses \
             (page {} of {} bytes): the file was truncated; restore it from a backup",
            file.display(),
            meta.last_page,
            meta.page_size
        ));
    }
    Ok(())
}

/// Checks `data.mdb` in `dir` before it is opened.
pub fn check_before_open(dir: &Path) -> Result<(), String> {
    let file = dir.join("data.mdb");
    let (len, head) = match File::open(&file) {
        Ok(f) => {
            let len = f
                .metadata()
                .map_err(|e| format!("data_dir: cannot read {}: {e}", file.display()))?
                .len();
            let mut head = Vec::with_capacity(2 * MAX_PAGE);
            f.take(2 * MAX_PAGE as u64)
                .read_to_end(&mut head)
                .map_err(|e| format!("data_dir: cannot read {}: {e}", file.display()))?;
            (Some(len), head)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, Vec::new()),
        Err(e) => return Err(format!("data_dir: cannot read {}: {e}", file.display())),
    };
    check(dir, len, &head)
}

/// Records that `dir` holds a database (after a successful open).
pub fn mark(dir: &Path) -> Result<(), String> {
    let marker = dir.join(MARKER);
    if marker.exists() {
        return Ok(());
    }
    std::fs::write(
        &marker,
        "This directory holds a kvs database (data.mdb). While this file is here,\n\
         kvs refuses to start on a missing or empty data.mdb instead of serving no data.\n",
    )
    .map_err(|e| format!("data_dir: cannot write {}: {e}", marker.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two meta pages of `page` bytes: the second is the newer.
    fn head(page: usize, last_pages: (u64, u64)) -> Vec<u8> {
        let mut b = vec![0u8; 2 * page];
        for (i, (last, txn)) in [(last_pages.0, 7u64), (last_pages.1, 8u64)]
            .iter()
            .enumerate()
        {
            let m = i * page + PAGE_HEADER;
            b[m..m + 4].copy_from_slice(&MDB_MAGIC.to_le_bytes());
            b[m + 24..m + 28].copy_from_slice(&(page as u32).to_le_bytes());
            b[m + 120..m + 128].copy_from_slice(&last.to_le_bytes());
            b[m + 128..m + 136].copy_from_slice(&txn.to_le_bytes());
        }
        b
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kvs-datafile-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_newest_meta_decides_the_size_needed() {
        let d = dir();
        let h = head(4096, (44, 53));
        assert!(check(&d, Some(54 * 4096), &h).is_ok());
        let e = check(&d, Some(27 * 4096), &h).unwrap_err();
        assert!(e.contains("shorter than the 221184 bytes"), "{e}");
        // Garbage where the meta pages should be.
        let e = check(&d, Some(8192), &[7u8; 8192]).unwrap_err();
        assert!(e.contains("not an LMDB database"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_emptied_file_is_refused_once_the_directory_held_data() {
        let d = dir();
        assert!(check(&d, None, &[]).is_ok());
        assert!(check(&d, Some(0), &[]).is_ok());
        mark(&d).unwrap();
        assert!(check(&d, Some(0), &[]).unwrap_err().contains("is empty"));
        assert!(check(&d, None, &[]).unwrap_err().contains("is missing"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
