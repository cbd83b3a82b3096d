//! The TCP shards' poller: one epoll instance per shard, itself watched by
//! tokio. An upgraded socket leaves tokio's reactor (which keeps a 256-byte
//! registration per socket) for the shard's epoll set, where it costs no
//! user-space memory: the token lives in the kernel's epoll entry.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::poller::Poller;

/// Events taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;

pub struct EpollPoller {
    epoll: AsyncFd<OwnedFd>,
    events: Vec<libc::epoll_event>,
}

impl EpollPoller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` keeps its descriptor open and unchanged
        // until dropped, which is what registration requires.
        let epoll = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(EpollPoller {
            epoll,
            events: Vec::with_capacity(EVENTS_PER_WAIT),
        })
    }
}

impl EpollPoller {
    /// Adds or changes a socket's entry: always readable and peer-closed,
    /// writable only when asked (edge-triggered).
    fn control(
        &self,
        op: libc::c_int,
        socket: &std::net::TcpStream,
        token: usize,
        writable: bool,
    ) -> io::Result<()> {
        let mut events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
        if writable {
            events |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: token as u64,
        };
        // SAFETY: both descriptors are open; `event` outlives the call.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, socket.as_raw_fd(), &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<Option<T>> {
    loop {
        match op() {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Poller for EpollPoller {
    type Stream = tokio::net::TcpStream;
    type Socket = std::net::TcpStream;

    fn adopt(&mut self, stream: Self::Stream, token: usize) -> io::Result<Self::Socket> {
        // Leaves tokio's reactor; stays non-blocking.
        let socket = stream.into_std()?;
        self.control(libc::EPOLL_CTL_ADD, &socket, token, false)?;
        Ok(socket)
    }

    fn want_writable(
        &mut self,
        socket: &mut Self::Socket,
        token: usize,
        on: bool,
    ) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, socket, token, on)
    }

    fn read(&mut self, socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
        retry(|| socket.read(buf))
    }

    fn write(&mut self, socket: &mut Self::Socket, buf: &[u8]) -> io::Result<Option<usize>> {
        retry(|| socket.write(buf))
    }

    fn shutdown(&mut self, socket: &mut Self::Socket) {
        let _ = socket.shutdown(Shutdown::Write);
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>, ready: &mut Vec<usize>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.epoll.poll_read_ready(cx))?;
            self.events.clear();
            // SAFETY: the buffer has room for EVENTS_PER_WAIT events; the
            // kernel writes at most that many and returns how many.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    EVENTS_PER_WAIT as i32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Poll::Ready(Err(e));
            }
            let n = n as usize;
            // SAFETY: the kernel initialised the first `n` entries.
            unsafe { self.events.set_len(n) };
            if n < EVENTS_PER_WAIT {
                // Drained: tokio reports the epoll descriptor again when a
                // socket in the set becomes ready.
                guard.clear_ready();
            }
            if n == 0 {
                continue;
            }
            ready.extend(self.events.iter().map(|e| {
                let token = e.u64;
                token as usize
            }));
            return Poll::Ready(Ok(()));
        }
    }
}
