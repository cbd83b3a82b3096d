//! Where the load goes, and the rule that it only ever goes to loopback.
//!
//! A load generator pointed at the wrong host is a denial-of-service tool,
//! so the target must be a literal `127.x.y.z` address or `localhost`
//! (resolved to 127.0.0.1 without asking DNS). Everything else is refused
//! before a single socket is opened. IPv4 only: the source-address spreading
//! in [`crate::dial`] uses 127.0.0.0/8.

use std::net::{Ipv4Addr, SocketAddrV4};

use thiserror::Error;

/// Why a URL given on the command line cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("`{url}`: the URL must start with {expected}")]
    Scheme { url: String, expected: &'static str },
    #[error("`{url}`: no host given")]
    NoHost { url: String },
    #[error(
        "`{url}`: host `{host}` is not loopback; surge-load only sends traffic to a literal 127.x.y.z address or `localhost`"
    )]
    NotLoopback { url: String, host: String },
    #[error("`{url}`: port `{port}` is not a number from 1 to 65535")]
    Port { url: String, port: String },
}

/// A parsed `ws://` or `http://` URL on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The socket address to connect to.
    pub addr: SocketAddrV4,
    /// The `Host` header value, as written in the URL (`localhost:8080`).
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
    /// `wss://`: the upgrade goes over TLS.
    pub tls: bool,
    /// Offer permessage-deflate in the upgrade, as browsers do. Only for
    /// clients that read no `message` frame: tungstenite cannot inflate, so
    /// a compressed one ends the connection.
    pub deflate: bool,
}

impl Target {
    /// The URL tungstenite is handed for the upgrade request.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority, self.path)
    }
}

/// Parses a `ws://host[:port][/path]` URL (port 80 by default) or a
/// `wss://` one (port 443 by default).
pub fn parse_ws_url(url: &str) -> Result<Target, TargetError> {
    if url.trim().starts_with("wss://") {
        return parse(url, "wss://", 443).map(|t| Target { tls: true, ..t });
    }
    parse(url, "ws://", 80)
}

/// Parses an `http://host[:port][/path]` URL (port 80 by default).
pub fn parse_http_url(url: &str) -> Result<Target, TargetError> {
    parse(url, "http://", 80)
}

fn parse(url: &str, scheme: &'static str, default_port: u16) -> Result<Target, TargetError> {
    let rest = url
        .trim()
        .strip_prefix(scheme)
        .ok_or_else(|| TargetError::Scheme {
            url: url.to_string(),
            expected: scheme,
        })?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        return Err(TargetError::NoHost {
            url: url.to_string(),
        });
    }
    // No IPv6: a bracketed host is refused by the loopback rule at once.
    if authority.starts_with('[') {
        return Err(TargetError::NotLoopback {
            url: url.to_string(),
            host: authority.to_string(),
        });
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            let port =
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| TargetError::Port {
                        url: url.to_string(),
                        port: p.to_string(),
                    })?;
            (h, port)
        }
        None => (authority, default_port),
    };
    let ip = loopback_host(host).ok_or_else(|| TargetError::NotLoopback {
        url: url.to_string(),
        host: host.to_string(),
    })?;
    Ok(Target {
        addr: SocketAddrV4::new(ip, port),
        authority: authority.to_string(),
        path,
        tls: false,
        deflate: false,
    })
}

/// The loopback address a host names, if it names one without DNS.
fn loopback_host(host: &str) -> Option<Ipv4Addr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(Ipv4Addr::LOCALHOST);
    }
    let ip: Ipv4Addr = host.parse().ok()?;
    ip.is_loopback().then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_parse() {
        let t = parse_ws_url("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(t.ws_url(), "ws://127.0.0.1:8080/ws");
        let t = parse_ws_url("ws://localhost:9/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(t.authority, "localhost:9");
        let t = parse_http_url("http://127.9.8.7").unwrap();
        assert_eq!(t.addr, "127.9.8.7:80".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = parse_ws_url("ws://127.0.0.1:1?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
        let t = parse_ws_url("wss://127.0.0.1/ws").unwrap();
        assert!(t.tls);
        assert_eq!(t.addr, "127.0.0.1:443".parse().unwrap());
        assert_eq!(t.ws_url(), "wss://127.0.0.1/ws");
        assert!(!parse_ws_url("ws://127.0.0.1/ws").unwrap().tls);
    }

    #[test]
    fn non_loopback_is_refused() {
        for url in [
            "ws://10.0.0.1:8080/ws",
            "ws://example.com/ws",
            "ws://0.0.0.0:80/",
            "ws://[::1]:80/",
            "ws://128.0.0.1/",
        ] {
            assert!(
                matches!(parse_ws_url(url), Err(TargetError::NotLoopback { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn bad_scheme_and_port_are_refused() {
        assert!(matches!(
            parse_ws_url("https://127.0.0.1/"),
            Err(TargetError::Scheme { .. })
        ));
        assert!(matches!(
            parse_ws_url("wss://10.0.0.1/"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            parse_http_url("ws://127.0.0.1/"),
            Err(TargetError::Scheme { .. })
        ));
        assert!(matches!(
            parse_ws_url("ws://127.0.0.1:0/"),
            Err(TargetError::Port { .. })
        ));
        assert!(matches!(
            parse_ws_url("ws://127.0.0.1:http/"),
            Err(TargetError::Port { .. })
        ));
        assert!(matches!(
            parse_ws_url("ws:///x"),
            Err(TargetError::NoHost { .. })
        ));
    }
}
