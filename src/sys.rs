//! The one place kvs talks to the C library directly: the open-file limit,
//! which std does not expose. Every connection costs one descriptor, so a
//! node raises its soft limit to the hard one at start and serves no more
//! connections than fit.

/// `struct rlimit` on Linux (both fields are `rlim_t`, 64-bit).
#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

const RLIMIT_NOFILE: i32 = 7;

extern "C" {
    fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
}

/// Raises the soft open-file limit to the hard limit; returns the soft
/// limit in force afterwards, or `None` if it cannot be read.
pub fn raise_nofile_limit() -> Option<u64> {
    let mut lim = RLimit { cur: 0, max: 0 };
    // Safety: `lim` is a valid, writable `struct rlimit`, and getrlimit and
    // setrlimit only read or write that struct.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.cur < lim.max {
            let raised = RLimit {
                cur: lim.max,
                max: lim.max,
            };
            if setrlimit(RLIMIT_NOFILE, &raised) == 0 {
                lim.cur = lim.max;
            }
        }
    }
    Some(lim.cur)
}

/// `struct statvfs` on Linux x86_64 (glibc).
#[repr(C)]
struct StatVfs {
    f_bsize: u64,
    f_frsize: u64,
    f_blocks: u64,
    f_bfree: u64,
    f_bavail: u64,
    f_files: u64,
    f_ffree: u64,
    f_favail: u64,
    f_fsid: u64,
    f_flag: u64,
    f_namemax: u64,
    f_spare: [i32; 6],
}

extern "C" {
    fn statvfs(path: *const std::ffi::c_char, buf: *mut StatVfs) -> i32;
}

/// Bytes free for an unprivileged writer on the file system holding
/// `path`, or `None` if it cannot be read.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<StatVfs>::zeroed();
    // Safety: `c_path` is a NUL-terminated string that outlives the call,
    // and `buf` points to writable memory the size of `struct statvfs`,
    // which statvfs fills when it returns 0.
    let stat = unsafe {
        if statvfs(c_path.as_ptr(), buf.as_mut_ptr()) != 0 {
            return None;
        }
        buf.assume_init()
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Descriptors kept for everything but client connections (the database,
/// the listener, calls to peers, logs): a quarter of the limit, at least 64.
pub fn reserved_descriptors(limit: u64) -> u64 {
    (limit / 4).max(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_read_and_not_lowered() {
        let first = raise_nofile_limit().expect("getrlimit works");
        assert!(first > 0);
        assert_eq!(raise_nofile_limit(), Some(first));
        assert_eq!(reserved_descriptors(1024), 256);
        assert_eq!(reserved_descriptors(100), 64);
    }

    #[test]
    fn free_space_is_read() {
        let free = free_bytes(std::path::Path::new("/")).expect("statvfs works");
        assert!(free > 0);
        assert!(free_bytes(std::path::Path::new("/no/such/dir")).is_none());
    }
}
