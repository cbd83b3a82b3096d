//! Opening TCP connections from a spread of loopback source addresses.
//!
//! One source address can hold at most ~28 k connections to one target
//! (ephemeral ports 32768–60999), and the seed team's client stalled at
//! ~8.3 k for that reason. Linux routes all of 127.0.0.0/8 over `lo`, so
//! binding each socket to 127.0.0.1 … 127.0.0.K before `connect()` multiplies
//! the port space by K. `IP_BIND_ADDRESS_NO_PORT` defers the port choice to
//! `connect()`, where the kernel only needs the 4-tuple to be unique
//! (a plain `bind(ip, 0)` would reserve a port for *every* destination and
//! run out early).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// Source addresses 127.0.0.1, 127.0.0.2, … handed out round-robin by
/// attempt index, so workers with disjoint index ranges spread evenly too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePool {
    count: u32,
}

/// Most source addresses accepted: 127.0.0.1 … 127.0.255.255 would be
/// possible, but a few dozen already give a million ports.
pub const MAX_SOURCES: u32 = 4096;

impl SourcePool {
    /// `count` addresses starting at 127.0.0.1 (clamped to 1..=[`MAX_SOURCES`]).
    pub fn new(count: u32) -> SourcePool {
        SourcePool {
            count: count.clamp(1, MAX_SOURCES),
        }
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The source address of attempt number `index`.
    pub fn pick(&self, index: u64) -> Ipv4Addr {
        let offset = (index % u64::from(self.count)) as u32;
        Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + offset)
    }
}

/// Connects to `target` from `source` (port chosen by the kernel at connect).
pub async fn dial(source: Ipv4Addr, target: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    set_bind_address_no_port(&socket)?;
    socket.bind(&SocketAddrV4::new(source, 0).into())?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(target.into()).await
}

/// socket2 has no setter for this Linux option, hence the raw call.
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid open fd, a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin_from_127_0_0_1() {
        let pool = SourcePool::new(3);
        let picks: Vec<_> = (0..4).map(|i| pool.pick(i).to_string()).collect();
        assert_eq!(picks, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
        assert_eq!(SourcePool::new(0).len(), 1);
        assert_eq!(SourcePool::new(300).pick(299).to_string(), "127.0.1.44");
    }

    #[tokio::test]
    async fn dials_from_the_chosen_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            panic!("v4 listener")
        };
        let stream = dial(Ipv4Addr::new(127, 0, 0, 3), addr).await.unwrap();
        assert_eq!(stream.local_addr().unwrap().ip().to_string(), "127.0.0.3");
    }
}
