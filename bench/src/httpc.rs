//! The harness's small HTTP exchanges (readiness, `/stats`, `/metrics`,
//! publishes, hints). No connection reuse, so every exchange meets the
//! process listening now (a poller restarted on the same address, say).
//! The browsers are [`crate::sse_load`], not this.

use anyhow::Context;
use std::{net::SocketAddr, sync::LazyLock, time::Duration};

// Plain HTTP on loopback: no proxy, and no trust roots to load (they would
// weigh on the harness's RSS, a reported figure).
static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    let builder = reqwest::Client::builder().pool_max_idle_per_host(0).no_proxy();
    builder.tls_certs_only([]).build().expect("a plain HTTP client")
});

/// `GET http://addr/path`: the status and the body, within `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    exchange(CLIENT.get(format!("http://{addr}{path}")), timeout).await
}

/// `POST http://addr/path` of a JSON `body` with extra `headers`.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let request = CLIENT.post(format!("http://{addr}{path}")).header("content-type", "application/json");
    let request = headers.iter().fold(request, |r, (name, value)| r.header(*name, *value));
    exchange(request.body(body.to_owned()), timeout).await
}

/// Sends `request`: the status and the body; an error names the method and the URL.
async fn exchange(request: reqwest::RequestBuilder, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let (client, request) = request.timeout(timeout).build_split();
    let request = request.context("building an HTTP request")?;
    let what = format!("{} {}", request.method(), request.url());
    let answer = client.execute(request).await.with_context(|| what.clone())?;
    Ok((answer.status().as_u16(), answer.text().await.with_context(|| what)?))
}
