//! `--publish` parsing and error texts.
use crate::*;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

#[test]
fn publish_parses_docker_forms() {
    let p: Publish = "8080:80".parse().unwrap();
    assert_eq!(
        p,
        Publish {
            host_addr: Publish::DEFAULT_HOST_ADDR,
            host_port: 8080,
            guest_port: 80
        }
    );
    assert_eq!(p.to_string(), "8080:80");
    let p: Publish = "0.0.0.0:2222:22".parse().unwrap();
    assert_eq!(p.host_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!((p.host_port, p.guest_port), (2222, 22));
    assert_eq!(p.to_string(), "0.0.0.0:2222:22");
    let p: Publish = "[::1]:8443:443".parse().unwrap();
    assert_eq!(p.host_addr, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(p.to_string(), "[::1]:8443:443");
}

#[test]
fn publish_rejects_bad_forms_with_clear_text() {
    for (spec, needle) in [
        (
            "8080",
            "no ':' between the ports (expected HOST_PORT:GUEST_PORT",
        ),
        ("8080:", "guest port '' is not a number"),
        ("0:80", "host port '0'"),
        ("70000:80", "host port '70000'"),
        ("8080:http", "guest port 'http'"),
        ("localhost:8080:80", "'localhost' is not an IP address"),
        ("::1:8080:80", "too many ':'"),
        ("[::1:8080:80", "missing ']'"),
    ] {
        let e = spec.parse::<Publish>().unwrap_err().to_string();
        assert!(e.contains(needle), "{spec}: {e}");
        assert!(e.contains(&format!("'{spec}'")), "{spec}: {e}");
        assert!(e.contains("e.g. 8080:80"), "{spec}: {e}");
    }
}

#[test]
fn os_error_text_loses_its_code() {
    let e = io::Error::from_raw_os_error(libc::EADDRINUSE);
    assert_eq!(os_text(&e), "Address already in use");
}
