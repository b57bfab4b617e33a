//! Large cached bodies in sealed memory files, sent on plain HTTP/1.1 with `sendfile(2)`.
//!
//! Writing a 100 KiB body from memory copies it into the socket's buffers, and that copy was
//! over a third of the proxy core's time serving such assets, where nginx's `sendfile` hands
//! the kernel page references instead. A body of at least [`SEAL_MIN`] bytes is written once
//! into a `memfd`, sealed against any change (so the kernel may keep referring to its pages
//! after the call returns) and mapped read-only: the mapping is the body every other writer
//! uses (HTTP/2, TLS, the full proxy), so memory holds it once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;

/// Bodies from this size on are sealed: below it one copy costs less than the second system
/// call, and the file descriptors stay few (at most the cache's budget over this).
pub(super) const SEAL_MIN: usize = 64 * 1024;

/// A cached body: its bytes, and the sealed file holding them when it is large.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) bytes: Bytes,
    pub(super) file: Option<Arc<OwnedFd>>,
}

impl Shared {
    /// `data` as a cached body, sealed in a memory file when large (on the heap when the
    /// system refuses one: the body is the same, only sent with a copy).
    pub(super) fn new(data: Vec<u8>) -> Shared {
        if data.len() >= SEAL_MIN {
            if let Ok((bytes, file)) = seal(&data) {
                return Shared {
                    bytes,
                    file: Some(Arc::new(file)),
                };
            }
        }
        Shared {
            bytes: Bytes::from(data),
            file: None,
        }
    }
}

/// A read-only shared mapping of a sealed file, owned by the `Bytes` made from it.
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// The pages are sealed against writes and mapped read-only: shared reads are sound.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}
#[allow(unsafe_code)]
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    #[allow(unsafe_code)]
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`; the seals forbid any change.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `seal` mapped, once; no slice of it outlives `self`
        // (the `Bytes` owning it is gone).
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A sealed memory file holding `data`, and its read-only mapping as `Bytes`.
#[allow(unsafe_code)]
fn seal(data: &[u8]) -> io::Result<(Bytes, OwnedFd)> {
    // SAFETY: plain system calls on a descriptor this function owns; the mapping is checked
    // before use and handed to `Mapping`, which unmaps it.
    unsafe {
        let fd = check(libc::memfd_create(
            c"bascule-asset".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        ))?;
        let file = OwnedFd::from_raw_fd(fd);
        let mut written = 0;
        while written < data.len() {
            let rest = &data[written..];
            let n = libc::write(fd, rest.as_ptr().cast(), rest.len());
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            written += n as usize;
        }
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        check(libc::fcntl(fd, libc::F_ADD_SEALS, seals))?;
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            data.len(),
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = Mapping {
            ptr: ptr as *const u8,
            len: data.len(),
        };
        Ok((Bytes::from_owner(map), file))
    }
}

/// Sends the first `len` bytes of `file` on the non-blocking socket `socket` until done or the
/// socket is full; returns the bytes sent. The caller writes the rest the usual way.
#[allow(unsafe_code)]
pub(super) fn send_file(socket: RawFd, file: &OwnedFd, len: usize) -> io::Result<usize> {
    let mut sent = 0;
    while sent < len {
        let mut off = sent as libc::off_t;
        // SAFETY: both descriptors are open for the call; `off` is a valid out-parameter.
        let n = unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut off, len - sent) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break,
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        sent += n as usize;
    }
    Ok(sent)
}

/// Sends `head` on `socket` marked as followed by more (the body joins it in full segments),
/// without blocking; returns the bytes sent.
#[allow(unsafe_code)]
pub(super) fn send_head(socket: RawFd, head: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `head` is valid for its length for the call.
        let n = unsafe {
            libc::send(
                socket,
                head.as_ptr().cast(),
                head.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_is_sealed_and_reads_back_the_same() {
        let data: Vec<u8> = (0..SEAL_MIN + 123).map(|i| (i % 251) as u8).collect();
        let s = Shared::new(data.clone());
        assert_eq!(&s.bytes[..], &data[..]);
        let file = s.file.expect("sealed");
        // Sealed: the file can no longer be written or resized.
        #[allow(unsafe_code)]
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_WRITE, libc::F_SEAL_WRITE);
        let small = Shared::new(vec![1, 2, 3]);
        assert!(small.file.is_none());
        assert_eq!(&small.bytes[..], &[1, 2, 3]);
    }
}
