//! The io_uring backend: a ring per I/O thread drives the thread's
//! connections.
//!
//! - Accepting: one multishot accept per listener; each new connection posts a
//!   completion. Re-armed when the kernel ends the multishot.
//! - Receiving: one multishot receive per connection, into a buffer ring
//!   registered with the kernel (`IORING_REGISTER_PBUF_RING`): the kernel picks
//!   a buffer per completion, the session reads the frames in it (in place
//!   when aligned), and the buffer goes straight back to the ring. If the ring
//!   runs dry the multishot ends with `ENOBUFS`; buffers are returned at once,
//!   so re-arming right away is enough.
//! - Sending: `SENDMSG` gathering the session's outbox: small events copied
//!   back to back into chunks (one slice for hundreds), large ones as their
//!   header, their archive read in place from event memory and padding from
//!   a static block. One send in flight per connection; the outbox does not
//!   move entries, nor bytes already in a chunk, while it is.
//! - Waking: publishers that find an idle connection's mailbox empty queue the
//!   connection and, from another thread, write to an eventfd the ring is
//!   reading; thread 0 writes to it too when it hands this thread a
//!   connection. The loop empties the queue at the end of every turn.
//!
//! Every submission carries `user_data` = kind (8 bits) | generation (24 bits)
//! | slot (32 bits). A connection's slot is freed only when none of its
//! operations is in flight, and its generation changes, so a late completion
//! for a closed connection is recognized (and its buffer still returned).
//!
//! This file is the loop; `ring.rs` sets up and checks what it runs on (the
//! ring, the buffer ring, the eventfd).

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use io_uring::{EnterFlags, IoUring, cqueue, opcode, squeue, types};

mod ring;

pub(super) use ring::Setup;

use ring::{BUFFER_GROUP, BufferRing, EventFd, RING_ENTRIES};

use super::ServerState;
use super::accept::AcceptPause;
use super::listeners::Listeners;
use super::reply_poll::ReplyPoll;
use super::session::{Session, Tick, earliest, tick_interval};
use super::threads::Accepted;
use super::wake::{ReadyQueue, SessionWaker};
use crate::stream::Stream;

/// Most slices gathered into one send.
const SLICES_MAX: usize = 256;

const ACCEPT_TCP: u8 = 1;
const ACCEPT_UDS: u8 = 2;
const RECV: u8 = 3;
const SEND: u8 = 4;
const WAKE: u8 = 5;
const CANCEL: u8 = 6;

struct Connection {
    id: u64,
    stream: Stream,
    session: Session,
    waker: Arc<SessionWaker>,
    task_waker: Waker,
    /// The multishot receive is armed.
    receiving: bool,
    /// The multishot receive was cancelled because the session stalled; it
    /// is armed again once the session has caught up.
    receive_cancelled: bool,
    /// A send is in flight; its iovecs and message header must not change.
    sending: bool,
    /// Closing: shut down, waiting for the operations in flight to end.
    closing: bool,
    /// The send's slices; grown (never while sending) to what sends need,
    /// so that an idle connection holds few.
    iovecs: Vec<libc::iovec>,
    message: Box<libc::msghdr>,
}

// SAFETY: the raw pointers in `iovecs` and `message` point into this
// connection's own outbox, iovec vector and boxed header, all on the heap; the
// connection moves only as a whole,
// on the I/O thread.
unsafe impl Send for Connection {}

struct Slot {
    generation: u32,
    connection: Option<Connection>,
}

struct Loop<'a> {
    server: &'a Arc<ServerState>,
    /// This I/O thread's index.
    thread: usize,
    ring: IoUring,
    buffers: BufferRing,
    eventfd: Arc<EventFd>,
    wake_buffer: Box<[u8; 8]>,
    publisher: starling_core::Publisher,
    slots: Vec<Slot>,
    free: Vec<u32>,
    open: usize,
    ready: Arc<ReadyQueue>,
    tcp: Option<std::net::TcpListener>,
    uds: Option<std::os::unix::net::UnixListener>,
    accepting: bool,
    /// Paused for want of descriptors: the listeners (accept kinds) to
    /// re-arm when it is over.
    accept_pause: AcceptPause,
    accepts_paused: Vec<u8>,
    /// Connections whose session stalled (slot, generation): looked at
    /// again at their stall deadlines.
    stalled: Vec<(u32, u32)>,
    /// Polls instead of sleeping for a while after a request.
    reply_poll: ReplyPoll,
}

fn user_data(kind: u8, generation: u32, slot: u32) -> u64 {
    (u64::from(kind) << 56) | (u64::from(generation & 0x00FF_FFFF) << 32) | u64::from(slot)
}

fn split(user_data: u64) -> (u8, u32, u32) {
    (
        (user_data >> 56) as u8,
        ((user_data >> 32) & 0x00FF_FFFF) as u32,
        user_data as u32,
    )
}

/// Runs I/O thread `thread`'s loop until the server stops. Calls `started`
/// once it is ready.
pub(super) fn run(
    setup: Setup,
    thread: usize,
    listeners: Listeners,
    server: &Arc<ServerState>,
    started: &dyn Fn(),
) -> io::Result<()> {
    let Setup {
        ring,
        buffers,
        eventfd,
    } = setup;
    server.threads.set_waker(thread, eventfd.clone());
    let ready = ReadyQueue::new(server.config.connections_max, eventfd.clone());
    let _serving = ready.serve_on_this_thread();
    let mut state = Loop {
        server,
        thread,
        ring,
        buffers,
        eventfd,
        wake_buffer: Box::new([0; 8]),
        publisher: server.bus.publisher(),
        slots: Vec::new(),
        free: Vec::new(),
        open: 0,
        ready,
        tcp: listeners.tcp,
        uds: listeners.uds,
        accepting: true,
        accept_pause: AcceptPause::default(),
        accepts_paused: Vec::new(),
        stalled: Vec::new(),
        reply_poll: ReplyPoll::default(),
    };
    state.arm_accept(ACCEPT_TCP)?;
    state.arm_accept(ACCEPT_UDS)?;
    state.arm_wake()?;
    started();
    let result = state.run();
    // The ring goes before the buffers it points at.
    let Loop { ring, buffers, .. } = state;
    drop(ring);
    drop(buffers);
    result
}

impl Loop<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(RING_ENTRIES as usize);
        let mut drain_deadline: Option<Instant> = None;
        let tick_every = tick_interval(&self.server.session);
        let mut next_tick = Instant::now() + tick_every;
        loop {
            // The turn's last step, before anything that waits (see
            // `ReadyQueue::serve_on_this_thread`).
            self.pull_ready()?;
            let deadlines = [
                drain_deadline,
                self.stall_deadline(),
                self.accept_pause.resume_at(),
            ];
            self.wait(earliest(&deadlines, next_tick))?;
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(user_data, result, flags) in &completions {
                self.complete(user_data, result, flags)?;
            }
            self.buffers.publish();
            self.expire_stalls()?;
            let now = Instant::now();
            if self.accept_pause.resumes(now) {
                for kind in std::mem::take(&mut self.accepts_paused) {
                    if self.accepting {
                        self.arm_accept(kind)?;
                    }
                }
            }
            if now >= next_tick {
                self.tick(now)?;
                next_tick = now + tick_every;
            }
            if self.server.stopping.load(Ordering::Acquire) {
                match drain_deadline {
                    None => {
                        drain_deadline = Some(Instant::now() + self.server.config.drain_timeout);
                        self.stop_accepting()?;
                        for slot in 0..self.slots.len() as u32 {
                            if let Some(connection) = self.connection(slot) {
                                connection.session.shut_down();
                                self.write(slot)?;
                            }
                        }
                    }
                    Some(deadline) if Instant::now() >= deadline => {
                        for slot in 0..self.slots.len() as u32 {
                            self.close(slot)?;
                        }
                    }
                    Some(_) => {}
                }
                if self.open == 0 {
                    return Ok(());
                }
            }
        }
    }

    /// Submits what is queued and waits for at least one completion, or
    /// until `deadline`; after a request, polls for a while before it
    /// sleeps (`ReplyPoll`).
    fn wait(&mut self, deadline: Instant) -> io::Result<()> {
        if self
            .reply_poll
            .poll(deadline, || poll_ring(&mut self.ring))?
        {
            return Ok(());
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let timeout = types::Timespec::from(left);
        let args = types::SubmitArgs::new().timespec(&timeout);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry we build points at memory that outlives the
            // operation: listener and connection descriptors kept until their
            // operations end, the wake buffer, and a connection's iovec
            // vector and boxed message header, left untouched (not even
            // grown) while it sends.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel and retry.
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self, kind: u8) -> io::Result<()> {
        let fd = match kind {
            ACCEPT_TCP => self.tcp.as_ref().map(AsRawFd::as_raw_fd),
            _ => self.uds.as_ref().map(AsRawFd::as_raw_fd),
        };
        if let Some(fd) = fd {
            let entry = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(user_data(kind, 0, 0));
            self.push(entry)?;
        }
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let entry = opcode::Read::new(
            types::Fd(self.eventfd.as_raw_fd()),
            self.wake_buffer.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(user_data(WAKE, 0, 0));
        self.push(entry)
    }

    /// The earliest deadline of a stalled session.
    fn stall_deadline(&mut self) -> Option<Instant> {
        let slots = &mut self.slots;
        self.stalled.retain(|&(slot, generation)| {
            live(slots, slot, generation).is_some_and(|c| c.session.stalled())
        });
        self.stalled
            .iter()
            .filter_map(|&(slot, generation)| {
                live(slots, slot, generation)?.session.stall_deadline()
            })
            .min()
    }

    /// Resumes the stalled sessions whose deadline has passed: their full
    /// queues are demoted and they go on.
    fn expire_stalls(&mut self) -> io::Result<()> {
        if self.stalled.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let due: Vec<(u32, u32)> = self
            .stalled
            .iter()
            .copied()
            .filter(|&(slot, generation)| {
                live(&mut self.slots, slot, generation)
                    .and_then(|c| c.session.stall_deadline())
                    .is_some_and(|deadline| deadline <= now)
            })
            .collect();
        for (slot, generation) in due {
            self.resume(slot, generation)?;
        }
        Ok(())
    }

    /// Hands a stalled session's backlog over and handles what it spilled;
    /// once it has caught up, reads the connection again.
    fn resume(&mut self, slot: u32, generation: u32) -> io::Result<()> {
        let Some(connection) = live(&mut self.slots, slot, generation) else {
            return Ok(());
        };
        if !connection.session.stalled() {
            return Ok(());
        }
        let mut cx = Context::from_waker(&connection.task_waker);
        if connection.session.resume(&mut cx, &mut self.publisher) {
            // Stalled again by a frame it had spilled.
            if !self.stalled.contains(&(slot, generation)) {
                self.stalled.push((slot, generation));
            }
        } else {
            // Caught up: the next stall cancels the receive again.
            connection.receive_cancelled = false;
            if !connection.receiving && !connection.closing {
                self.buffers.publish();
                self.arm_receive(slot)?;
            }
        }
        self.write(slot)
    }

    /// After bytes were handed to a session: if it stalled, stop receiving
    /// (cancel the multishot receive; what still completes is spilled) and
    /// watch its deadline.
    fn stop_receiving_if_stalled(&mut self, slot: u32, generation: u32) -> io::Result<()> {
        let Some(connection) = live(&mut self.slots, slot, generation) else {
            return Ok(());
        };
        if !connection.session.stalled() || connection.receive_cancelled {
            return Ok(());
        }
        // Register for room (the queue may even have drained by now).
        let mut cx = Context::from_waker(&connection.task_waker);
        if !connection.session.resume(&mut cx, &mut self.publisher) {
            return Ok(());
        }
        connection.receive_cancelled = true;
        let receiving = connection.receiving;
        self.stalled.push((slot, generation));
        if receiving {
            let entry = opcode::AsyncCancel::new(user_data(RECV, generation, slot))
                .build()
                .user_data(user_data(CANCEL, 0, 0));
            self.push(entry)?;
        }
        Ok(())
    }

    /// Keeps every session's time (see `Session::tick`).
    fn tick(&mut self, now: Instant) -> io::Result<()> {
        for slot in 0..self.slots.len() as u32 {
            let Some(connection) = self.connection(slot) else {
                continue;
            };
            if connection.closing {
                continue;
            }
            match connection.session.tick(now) {
                Tick::Idle => {}
                Tick::Write => self.write(slot)?,
                Tick::Close => self.close(slot)?,
            }
        }
        Ok(())
    }

    fn stop_accepting(&mut self) -> io::Result<()> {
        self.accepting = false;
        for kind in [ACCEPT_TCP, ACCEPT_UDS] {
            let entry = opcode::AsyncCancel::new(user_data(kind, 0, 0))
                .build()
                .user_data(user_data(CANCEL, 0, 0));
            self.push(entry)?;
        }
        Ok(())
    }

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) -> io::Result<()> {
        let (kind, generation, slot) = split(user_data);
        match kind {
            ACCEPT_TCP | ACCEPT_UDS => {
                let mut paused = false;
                if result >= 0 {
                    // SAFETY: a successful accept returns a new descriptor we own.
                    let fd = unsafe { OwnedFd::from_raw_fd(result) };
                    self.accept_pause.accepted();
                    if let Some(accepted) = self.accepted(kind, fd)
                        && let Some(accepted) = self.server.threads.place(self.thread, accepted)
                    {
                        self.admit(accepted)?;
                    }
                } else {
                    paused = self.accept_pause.failed(-result, Instant::now());
                }
                if !cqueue::more(flags) && self.accepting {
                    if paused {
                        // Re-armed when the pause is over: at once, it
                        // would fail again at once, round after round.
                        self.accepts_paused.push(kind);
                    } else {
                        self.arm_accept(kind)?;
                    }
                }
            }
            RECV => {
                let buffer = cqueue::buffer_select(flags);
                if result > 0
                    && let Some(id) = buffer
                    && let Some(connection) = live(&mut self.slots, slot, generation)
                {
                    let bytes = self.buffers.bytes(id, result as usize);
                    connection.session.receive(bytes, &mut self.publisher);
                    if connection.session.take_published_request() {
                        self.reply_poll.request_published();
                    }
                    self.stop_receiving_if_stalled(slot, generation)?;
                }
                if let Some(id) = buffer {
                    self.buffers.stage(id);
                }
                let more = cqueue::more(flags);
                if let Some(connection) = live(&mut self.slots, slot, generation) {
                    if !more {
                        connection.receiving = false;
                    }
                    // ECANCELED: we stopped receiving from a stalled session.
                    let cancelled = result == -libc::ECANCELED;
                    if result == 0 || (result < 0 && result != -libc::ENOBUFS && !cancelled) {
                        self.close(slot)?;
                    } else if !more && !connection.closing && !connection.session.stalled() {
                        // The buffer ring ran dry (ENOBUFS) or the kernel ended
                        // the multishot: buffers are back, so re-arm at once.
                        self.buffers.publish();
                        self.arm_receive(slot)?;
                        self.write(slot)?;
                    } else {
                        self.write(slot)?;
                    }
                }
                self.release_if_done(slot, generation);
            }
            SEND => {
                if let Some(connection) = live(&mut self.slots, slot, generation) {
                    connection.sending = false;
                    if result >= 0 {
                        connection.session.sent(result as usize);
                        if connection.session.outbox_has_room_again() {
                            // Its answers went out: handle the frames that
                            // waited for room, and receive again.
                            self.resume(slot, generation)?;
                        } else {
                            self.write(slot)?;
                        }
                    } else {
                        self.close(slot)?;
                    }
                }
                self.release_if_done(slot, generation);
            }
            WAKE => {
                self.server.threads.woken(self.thread);
                while let Some(accepted) = self.server.threads.take(self.thread) {
                    self.admit(accepted)?;
                }
                // The sessions it was woken for are pulled at the end of
                // the turn.
                self.arm_wake()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Pulls every session woken since the last time, and those woken
    /// meanwhile, until none is left.
    fn pull_ready(&mut self) -> io::Result<()> {
        while let Some(key) = self.ready.pop() {
            let (generation, slot) = ((key >> 32) as u32, key as u32);
            if let Some(connection) = live(&mut self.slots, slot, generation) {
                connection.waker.taken();
                self.resume(slot, generation)?;
                self.write(slot)?;
            }
        }
        Ok(())
    }

    /// A connection a listener of `kind` accepted, as the loop serves it;
    /// `None` if TLS cannot take it (it is dropped).
    fn accepted(&self, kind: u8, fd: OwnedFd) -> Option<Accepted> {
        let (stream, remote) = if kind == ACCEPT_TCP {
            let stream = TcpStream::from(fd);
            let _ = stream.set_nodelay(true);
            let remote = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match self.server.tcp_stream(stream) {
                Ok(stream) => (stream, remote),
                Err(error) => {
                    tracing::debug!(%remote, %error, "connection dropped: TLS cannot take it");
                    return None;
                }
            }
        } else {
            (Stream::Unix(UnixStream::from(fd)), String::new())
        };
        Some(Accepted { stream, remote })
    }

    /// Serves a connection placed on this thread.
    fn admit(&mut self, accepted: Accepted) -> io::Result<()> {
        let Accepted { stream, remote } = accepted;
        let peer = super::peer_ip(&remote);
        let (id, stats) = self
            .server
            .connections
            .open(stream.transport(), remote, self.thread);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    connection: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[slot as usize].generation;
        let key = (u64::from(generation) << 32) | u64::from(slot);
        let waker = SessionWaker::new(key, self.ready.clone());
        let task_waker = waker.waker();
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let message: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        self.slots[slot as usize].connection = Some(Connection {
            id,
            stream,
            session: self.server.new_session(peer, stats),
            waker,
            task_waker,
            receiving: false,
            receive_cancelled: false,
            sending: false,
            closing: false,
            iovecs: Vec::new(),
            message,
        });
        self.open += 1;
        self.arm_receive(slot)
    }

    fn arm_receive(&mut self, slot: u32) -> io::Result<()> {
        let generation = self.slots[slot as usize].generation;
        let Some(connection) = self.slots[slot as usize].connection.as_mut() else {
            return Ok(());
        };
        connection.receiving = true;
        connection.receive_cancelled = false;
        let entry = opcode::RecvMulti::new(types::Fd(connection.stream.as_raw_fd()), BUFFER_GROUP)
            .build()
            .user_data(user_data(RECV, generation, slot));
        self.push(entry)
    }

    /// Pulls deliveries and starts a send if there is output and none in flight.
    fn write(&mut self, slot: u32) -> io::Result<()> {
        let generation = self.slots[slot as usize].generation;
        let Some(connection) = self.slots[slot as usize].connection.as_mut() else {
            return Ok(());
        };
        if connection.sending || connection.closing {
            return Ok(());
        }
        if !connection.session.closing() {
            let mut cx = Context::from_waker(&connection.task_waker);
            connection.session.pull(&mut cx);
        }
        if connection.session.outbox().is_empty() {
            if connection.session.finished() {
                return self.close(slot);
            }
            return Ok(());
        }
        let iovecs = &mut connection.iovecs;
        iovecs.clear();
        connection.session.outbox().for_each_slice(|slice| {
            iovecs.push(libc::iovec {
                iov_base: slice.as_ptr().cast_mut().cast(),
                iov_len: slice.len(),
            });
            iovecs.len() < SLICES_MAX
        });
        connection.message.msg_iov = connection.iovecs.as_mut_ptr();
        connection.message.msg_iovlen = connection.iovecs.len() as _;
        connection.sending = true;
        let entry = opcode::SendMsg::new(
            types::Fd(connection.stream.as_raw_fd()),
            &*connection.message,
        )
        .flags(libc::MSG_NOSIGNAL as u32)
        .build()
        .user_data(user_data(SEND, generation, slot));
        self.push(entry)
    }

    /// Starts closing: shuts the socket down so that the operations in flight
    /// end; the slot is freed when the last of them has.
    fn close(&mut self, slot: u32) -> io::Result<()> {
        let generation = self.slots[slot as usize].generation;
        let Some(connection) = self.slots[slot as usize].connection.as_mut() else {
            return Ok(());
        };
        if !connection.closing {
            connection.closing = true;
            // SAFETY: plain syscall on a descriptor we own.
            unsafe { libc::shutdown(connection.stream.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.release_if_done(slot, generation);
        Ok(())
    }

    /// Frees a closing connection's slot once no operation references it.
    fn release_if_done(&mut self, slot: u32, generation: u32) {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        let done = entry
            .connection
            .as_ref()
            .is_some_and(|c| c.closing && !c.receiving && !c.sending);
        if done {
            let connection = entry.connection.take().expect("checked above");
            entry.generation = entry.generation.wrapping_add(1) & 0x00FF_FFFF;
            self.server.closed(self.thread, connection.id);
            self.free.push(slot);
            self.open -= 1;
        }
    }

    fn connection(&mut self, slot: u32) -> Option<&mut Connection> {
        self.slots.get_mut(slot as usize)?.connection.as_mut()
    }
}

/// Submits what is queued and runs the ring's deferred completions without
/// waiting for any; true if there are completions to handle. With
/// `DEFER_TASKRUN`, completions are posted only by an enter that asks for
/// events: looking at the completion queue alone would never see them.
fn poll_ring(ring: &mut IoUring) -> io::Result<bool> {
    let queued = ring.submission().len() as u32;
    // SAFETY: `io_uring_enter` with no argument (null pointer, size 0) and
    // `min_complete` 0 reads nothing of ours and returns without waiting;
    // `queued` entries are in the submission queue (published to the
    // kernel when the queue handle above was dropped), each pointing at
    // memory that outlives its operation (see `Loop::push`).
    let entered = unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(queued, 0, EnterFlags::GETEVENTS.bits(), None)
    };
    match entered {
        Ok(_) => Ok(!ring.completion().is_empty()),
        // Interrupted, or completions waiting in the kernel's overflow list:
        // the loop goes round, and its next wait sorts them out.
        Err(error) if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(true),
        Err(error) => Err(error),
    }
}

/// The connection in `slot` if it is still the one `generation` names.
fn live(slots: &mut [Slot], slot: u32, generation: u32) -> Option<&mut Connection> {
    let entry = slots.get_mut(slot as usize)?;
    if entry.generation != generation {
        return None;
    }
    entry.connection.as_mut()
}
