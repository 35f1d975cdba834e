//! Which `Host` headers the server answers to: on a loopback bind, only loopback names (a web
//! page cannot reach it by DNS rebinding), plus any names the configuration allows.

use std::net::IpAddr;

/// The `Host` policy of one server.
#[derive(Clone, Debug, Default)]
pub struct HostPolicy {
    /// Bound to a loopback address: refuse hosts that are not loopback names or addresses.
    loopback_only: bool,
    /// Further names (without port) accepted, from `[server] allowed_hosts`.
    allowed: Vec<String>,
}

impl HostPolicy {
    /// The policy for a server bound to `bind_host`.
    pub fn new(bind_host: &str, allowed: &[String]) -> Self {
        Self {
            loopback_only: is_loopback_name(bind_host),
            allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request with this `Host` header (if any) is answered.
    pub fn allows(&self, host: Option<&str>) -> bool {
        if !self.loopback_only {
            return true;
        }
        let Some(name) = host.and_then(strip_port) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        is_loopback_name(&name) || self.allowed.contains(&name)
    }
}

/// The host part of a `Host` header: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn strip_port(host: &str) -> Option<&str> {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return (after.is_empty() || is_port(after.strip_prefix(':')?)).then_some(inside);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// `localhost`, `*.localhost` (RFC 6761), or a loopback IP address.
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_server_answers_only_loopback_hosts_and_allowed_names() {
        let policy = HostPolicy::new("127.0.0.1", &["box.internal".into()]);
        for ok in [
            "localhost",
            "localhost:8000",
            "LOCALHOST:8000",
            "127.0.0.1:8000",
            "127.1.2.3",
            "[::1]:8000",
            "[::1]",
            "app.localhost:1",
            "box.internal:8000",
        ] {
            assert!(policy.allows(Some(ok)), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:8000",
            "[::2]:80",
            "localhost:http",
            "",
        ] {
            assert!(!policy.allows(Some(refused)), "{refused}");
        }
        assert!(!policy.allows(None));
    }

    #[test]
    fn a_server_on_every_interface_answers_any_host() {
        let policy = HostPolicy::new("0.0.0.0", &[]);
        assert!(policy.allows(Some("evil.example")));
        assert!(HostPolicy::new("::1", &[]).loopback_only);
        assert!(HostPolicy::new("localhost", &[]).loopback_only);
    }
}
