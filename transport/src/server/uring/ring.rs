//! The io_uring plumbing the loop runs on, set up and checked on the thread
//! that will run it: the ring itself, the registered buffer ring that
//! multishot receives fill, and the eventfd that wakes the loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, Probe, opcode, types};

use crate::server::wake::WakeLoop;

/// Submission queue entries.
pub(super) const RING_ENTRIES: u32 = 1024;
/// Receive buffers in the buffer ring (a power of two, at most 32768).
const BUFFERS: u16 = 256;
/// Bytes per receive buffer.
const BUFFER_BYTES: usize = 16 << 10;
/// The buffer group id of the ring.
pub(super) const BUFFER_GROUP: u16 = 0;

/// A ring, its buffers and its wake-up eventfd, set up and checked on the
/// thread that will run it.
pub(crate) struct Setup {
    pub(super) ring: IoUring,
    pub(super) buffers: BufferRing,
    pub(super) eventfd: Arc<EventFd>,
}

impl Setup {
    /// Builds the ring and checks everything the loop needs.
    pub(crate) fn new() -> io::Result<Setup> {
        check_kernel()?;
        let ring = build_ring()?;
        check_opcodes(&ring)?;
        let buffers = BufferRing::register(&ring)?;
        let eventfd = Arc::new(EventFd::new()?);
        Ok(Setup {
            ring,
            buffers,
            eventfd,
        })
    }
}

/// Multishot receive needs Linux 6.0 (multishot accept and buffer rings 5.19),
/// and a probe cannot tell: it lists opcodes, not their flags.
fn check_kernel() -> io::Result<()> {
    // SAFETY: `uname` fills the zeroed struct we own.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel writes a NUL-terminated string into `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }.to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (6, 0) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("kernel {release} is older than 6.0 (multishot receive)"),
        ));
    }
    Ok(())
}

fn build_ring() -> io::Result<IoUring> {
    // Single issuer with deferred task running is the cheapest mode; older
    // kernels refuse the flags with EINVAL, so step down.
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)
        .or_else(|_| IoUring::builder().setup_coop_taskrun().build(RING_ENTRIES))
        .or_else(|_| IoUring::new(RING_ENTRIES))
}

fn check_opcodes(ring: &IoUring) -> io::Result<()> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let needed = [
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::RecvMulti::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("READ", opcode::Read::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("opcode {name} is not supported"),
            ));
        }
    }
    Ok(())
}

/// Receive buffers server with the kernel through a registered buffer ring.
pub(super) struct BufferRing {
    /// The ring of buffer descriptors, page-aligned, `BUFFERS` entries.
    entries: *mut types::BufRingEntry,
    entries_layout: std::alloc::Layout,
    /// The buffers, `BUFFERS * BUFFER_BYTES` bytes, page-aligned.
    memory: *mut u8,
    memory_layout: std::alloc::Layout,
    /// Our copy of the ring's tail (the kernel reads the server one).
    tail: u16,
}

impl BufferRing {
    fn register(ring: &IoUring) -> io::Result<BufferRing> {
        let entries_layout = std::alloc::Layout::from_size_align(
            BUFFERS as usize * size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("buffer ring layout");
        let memory_layout =
            std::alloc::Layout::from_size_align(BUFFERS as usize * BUFFER_BYTES, 4096)
                .expect("buffer layout");
        // SAFETY: both layouts have non-zero sizes.
        let entries =
            unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast::<types::BufRingEntry>();
        // SAFETY: as above.
        let memory = unsafe { std::alloc::alloc_zeroed(memory_layout) };
        if entries.is_null() || memory.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut buffers = BufferRing {
            entries,
            entries_layout,
            memory,
            memory_layout,
            tail: 0,
        };
        // SAFETY: the descriptor ring is page-aligned, `BUFFERS` entries long,
        // and lives (in `buffers`) until after the ring is dropped: `Setup`
        // and the loop keep the ring and these buffers together and drop the
        // ring first (see `run` in `mod.rs`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                BUFFERS,
                BUFFER_GROUP,
                0,
            )?
        };
        for id in 0..BUFFERS {
            buffers.stage(id);
        }
        buffers.publish();
        Ok(buffers)
    }

    /// Buffer `id`'s first `len` bytes.
    pub(super) fn bytes(&self, id: u16, len: usize) -> &[u8] {
        assert!(
            id < BUFFERS && len <= BUFFER_BYTES,
            "buffer id and length come from our own ring"
        );
        // SAFETY: in bounds of the buffer memory (checked above); the kernel
        // wrote these bytes before posting the completion that named `id`,
        // and does not touch the buffer again until we give it back.
        unsafe { std::slice::from_raw_parts(self.memory.add(id as usize * BUFFER_BYTES), len) }
    }

    /// Puts buffer `id` back in the ring (visible after [`Self::publish`]).
    pub(super) fn stage(&mut self, id: u16) {
        let slot = self.tail & (BUFFERS - 1);
        // SAFETY: `slot` < BUFFERS; the entry at the tail is ours to write
        // until the tail moves past it.
        let entry = unsafe { &mut *self.entries.add(slot as usize) };
        // SAFETY: in bounds of the buffer memory.
        entry.set_addr(unsafe { self.memory.add(id as usize * BUFFER_BYTES) } as u64);
        entry.set_len(BUFFER_BYTES as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes staged buffers visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: `entries` is the ring base; the tail field overlays the
        // first entry's reserved field, which the kernel reads atomically.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        // SYNC POINT (buffer-ring): Release publishes the staged entries to
        // the kernel, which reads the tail with acquire semantics.
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with these layouts; the ring that
        // used them is gone (see `run` in `mod.rs`).
        unsafe {
            std::alloc::dealloc(self.entries.cast(), self.entries_layout);
            std::alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}

/// The loop's wake-up: an eventfd the ring keeps a read on.
#[derive(Debug)]
pub(super) struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `eventfd` returned a new descriptor that we own.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl WakeLoop for EventFd {
    fn wake_loop(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd. A full
        // counter (EAGAIN) means a wake-up is already pending.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}
