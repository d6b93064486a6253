//! Where to find one or more pollers: an edge's `--poller` and a poller's
//! `--peers` take the same values, parsed and resolved here.
//!
//! A target is a scheme (`http://`, or `https://` for TLS verified for the
//! host's name), a host (an IP address or a DNS name, re-resolved by its
//! user, so a Kubernetes headless Service works as discovery) and a port.

use rustls::pki_types::ServerName;
use std::{fmt, net::SocketAddr};
use tonic::codegen::http::Uri;

/// The port a target without one means: the poller's default.
pub const DEFAULT_PORT: u16 = 50051;

/// A `--poller` or `--peers` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `https://`: TLS, with the certificate verified for `host`.
    pub tls: bool,
}

impl Target {
    /// `http://host:port` or `https://host:port` (the path, if any, must be
    /// empty). Plain `http://` belongs on a trusted private network.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: Uri = s.trim().parse().map_err(|e| format!("not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{s:?}: must be an http:// or https:// URL")),
        };
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("{s:?}: must not have a path"));
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{s:?}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let target = Self { host, port: uri.port_u16().unwrap_or(DEFAULT_PORT), tls };
        if tls && target.tls_name().is_none() {
            return Err(format!("{s:?}: the host is not a name a certificate can carry"));
        }
        Ok(target)
    }

    /// The name the poller's certificate must carry, for `https://`.
    pub fn tls_name(&self) -> Option<ServerName<'static>> {
        self.tls.then(|| ServerName::try_from(self.host.clone()).ok()).flatten()
    }

    /// The target's addresses now (an IP address is its own).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port)).await?.collect())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_refuse_clearly() {
        assert_eq!(
            Target::parse("http://poller:7000").unwrap(),
            Target { host: "poller".into(), port: 7000, tls: false }
        );
        assert_eq!(Target::parse("http://10.1.2.3").unwrap().port, DEFAULT_PORT);
        assert_eq!(Target::parse("http://[::1]:9").unwrap().to_string(), "http://[::1]:9");
        let tls = Target::parse("https://pollers.svc:7000").unwrap();
        assert_eq!(tls, Target { host: "pollers.svc".into(), port: 7000, tls: true });
        assert_eq!(tls.to_string(), "https://pollers.svc:7000");
        assert_eq!(tls.tls_name(), Some(ServerName::try_from("pollers.svc").unwrap()));
        assert_eq!(Target::parse("https://[::1]:9").unwrap().tls_name(), Some("::1".try_into().unwrap()));
        assert_eq!(Target::parse("http://poller:1").unwrap().tls_name(), None);
        for bad in ["poller:1", "http://", "https://p:1/x", "http://p:1/x", "ftp://p", "https://a..b:1", ""] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
