//! The binaries' `--listen` socket.

use std::{io, net::SocketAddr};
use tokio::net::TcpListener;

/// Binds `--listen`; the error names the flag and the address.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| io::Error::new(e.kind(), format!("--listen {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_busy_address_is_refused_naming_the_flag() {
        let taken = super::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = super::bind(addr).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("--listen {addr}: ")), "{err}");
    }
}
