//! Per-client limits through `Admission`'s calls.

use std::net::{IpAddr, Ipv4Addr};

use std::time::Duration;

use super::{AbortCause, Admission, ClientLimitConfig, GuardConfig, Refusal};
use crate::Instant;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn admission(limits: ClientLimitConfig) -> Admission {
    Admission::new(100, 2, GuardConfig::default()).with_client_limits(limits)
}

const T0: Instant = Instant::ZERO;

#[test]
fn connections_per_ip_count_handshakes_and_live_slots() {
    let mut a = admission(ClientLimitConfig {
        connections_per_ip: 2,
        ..ClientLimitConfig::default()
    });
    let r1 = a.admit(ip(1), T0).expect("first");
    let r2 = a.admit(ip(1), T0).expect("second");
    assert_eq!(a.admit(ip(1), T0), Err(Refusal::PerIp { limit: 2 }));
    assert_eq!(a.admit(ip(1), T0).unwrap_err().status(), 429);
    // Another address is not affected, and a refusal reserved nothing.
    let other = a.admit(ip(2), T0).expect("other address");
    assert_eq!(a.used(), 3);
    let live = a.complete(r1);
    assert_eq!(
        a.connections_from(ip(1)),
        2,
        "a live connection still counts"
    );
    a.abort(r2, AbortCause::Io);
    let r3 = a.admit(ip(1), T0).expect("a place came free");
    a.close(live);
    a.abort(r3, AbortCause::Rejected);
    a.abort(other, AbortCause::Rejected);
    assert_eq!(a.connections_from(ip(1)), 0);
    assert_eq!(
        a.tracked_addresses(),
        0,
        "nothing is remembered once all left"
    );
}

#[test]
fn pending_handshakes_per_ip_free_up_when_upgraded() {
    let mut a = admission(ClientLimitConfig {
        handshakes_per_ip: 2,
        ..ClientLimitConfig::default()
    });
    let r1 = a.admit(ip(1), T0).expect("first");
    let _r2 = a.admit(ip(1), T0).expect("second");
    assert_eq!(
        a.admit(ip(1), T0),
        Err(Refusal::HandshakesPerIp { limit: 2 })
    );
    assert_eq!(a.handshaking_from(ip(1)), 2);
    let _live = a.complete(r1);
    assert_eq!(a.handshaking_from(ip(1)), 1);
    let _r3 = a
        .admit(ip(1), T0)
        .expect("an upgraded connection is no longer pending");
    assert_eq!(a.connections_from(ip(1)), 3);
}

#[test]
fn handshake_rate_per_ip_refills_and_says_when() {
    let mut a = admission(ClientLimitConfig {
        handshake_rate_per_ip: 2,
        ..ClientLimitConfig::default()
    });
    let mut held = vec![a.admit(ip(1), T0).unwrap(), a.admit(ip(1), T0).unwrap()];
    let refusal = a.admit(ip(1), T0).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::HandshakeRate {
            limit: 2,
            retry_after_secs: 1
        }
    );
    assert_eq!(refusal.retry_after_secs(Duration::from_secs(5)), 1);
    assert_eq!(refusal.status(), 429);
    held.push(
        a.admit(ip(2), T0)
            .expect("another address has its own bucket"),
    );
    held.push(
        a.admit(ip(1), Instant::from_millis(500))
            .expect("one token back after 0.5 s"),
    );
    assert!(a.admit(ip(1), Instant::from_millis(500)).is_err());
    for r in held {
        a.abort(r, AbortCause::Io);
    }
    // The bucket outlives the connections until it has refilled.
    a.observe(Default::default(), Instant::from_millis(600));
    assert_eq!(a.tracked_addresses(), 1);
    a.observe(Default::default(), Instant::from_millis(1600));
    assert_eq!(a.tracked_addresses(), 0);
}

#[test]
fn per_user_limit_is_checked_and_counted_at_once() {
    let mut a = admission(ClientLimitConfig {
        connections_per_user: 1,
        ..ClientLimitConfig::default()
    });
    let r1 = a.admit(ip(1), T0).unwrap();
    let r2 = a.admit(ip(2), T0).unwrap();
    assert_eq!(a.bind_user(&r1, "alice"), Ok(()));
    assert_eq!(
        a.bind_user(&r2, "alice"),
        Err(Refusal::PerUser { limit: 1 })
    );
    assert_eq!(a.bind_user(&r2, "bob"), Ok(()));
    a.abort(r2, AbortCause::Rejected);
    assert_eq!(a.connections_of("bob"), 0);
    let live = a.complete(r1);
    assert_eq!(a.connections_of("alice"), 1);
    let r3 = a.admit(ip(3), T0).unwrap();
    assert!(a.bind_user(&r3, "alice").is_err());
    a.close(live);
    assert_eq!(a.bind_user(&r3, "alice"), Ok(()), "freed by the close");
}

#[test]
fn nothing_is_tracked_while_every_limit_is_off() {
    let mut a = admission(ClientLimitConfig::default());
    let r = a.admit(ip(1), T0).unwrap();
    assert_eq!(a.bind_user(&r, "alice"), Ok(()));
    assert_eq!((a.tracked_addresses(), a.connections_of("alice")), (0, 0));
    a.abort(r, AbortCause::Io);
}

#[test]
fn a_full_gateway_answers_503_before_any_client_limit() {
    let mut a =
        Admission::new(1, 1, GuardConfig::default()).with_client_limits(ClientLimitConfig {
            connections_per_ip: 1,
            ..ClientLimitConfig::default()
        });
    let _r = a.admit(ip(1), T0).unwrap();
    assert_eq!(a.admit(ip(1), T0), Err(Refusal::Full { capacity: 1 }));
    assert_eq!(a.admit(ip(1), T0).unwrap_err().status(), 503);
}
