//! Where the admin listener is, for the subcommands that talk to a
//! running gateway (`surge feed`, `surge top`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `host:port` of an `http://host:port[/]` URL (or of a bare `host:port`).
pub fn host_port(url: &str) -> Option<String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => return None,
        None => url,
    };
    let host_port = rest.trim_end_matches('/');
    let valid = !host_port.is_empty()
        && !host_port.contains('/')
        && host_port
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    valid.then(|| host_port.to_owned())
}

/// Where to reach a listener bound to `addr`: a wildcard bind is reached
/// over loopback, as the feed usually runs beside the gateway.
pub fn listener_address(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}
