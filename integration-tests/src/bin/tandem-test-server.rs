//! `tandem-test-server`: a small hyper 1 HTTP/1.1 server for the capture tests.
//!
//! ```text
//! tandem-test-server --listen 127.0.0.1:8080 [--writev] [--close-delay-ms N] [--upstream IP:PORT]
//! ```
//!
//! * `GET /bytes/N` answers `200` with an `N`-byte body (a repeating `0-9a-z` pattern);
//! * `GET /call/REST` (with `--upstream IP:PORT`) first makes a client call `GET /REST`
//!   to the upstream on a new connection, then answers `200` with the upstream's
//!   body: an async (tokio, one thread) server making client calls, for the trace
//!   linking tests;
//! * any other path answers `200` with `hello from tandem-test-server: <path>\n`.
//!
//! Connections are kept alive (HTTP/1.1). Without `--writev` hyper flattens headers
//! and body into one buffer, so a response is written with plain `write` calls whose
//! first bytes are the status line; with it, headers and body go out as separate
//! iovecs of one `writev`. With `--close-delay-ms N`, when a client ends a connection
//! the server waits N ms before closing its side (the client's socket stays in
//! FIN_WAIT2 meanwhile). Prints `listening on ADDR` on stdout once bound.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Largest body `/bytes/N` serves.
const MAX_BODY: usize = 64 * 1024 * 1024;

struct Options {
    listen: SocketAddr,
    writev: bool,
    close_delay: Duration,
    upstream: Option<SocketAddr>,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut listen = None;
    let mut writev = false;
    let mut close_delay = Duration::ZERO;
    let mut upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().context("--listen needs an address")?;
                listen = Some(
                    value
                        .parse()
                        .with_context(|| format!("--listen {value}: not an ip:port"))?,
                );
            }
            "--writev" => writev = true,
            "--close-delay-ms" => {
                let value = args.next().context("--close-delay-ms needs a number")?;
                let ms = value
                    .parse()
                    .with_context(|| format!("--close-delay-ms {value}: not a number"))?;
                close_delay = Duration::from_millis(ms);
            }
            "--upstream" => {
                let value = args.next().context("--upstream needs an address")?;
                upstream = Some(
                    value
                        .parse()
                        .with_context(|| format!("--upstream {value}: not an ip:port"))?,
                );
            }
            "-h" | "--help" => {
                println!(
                    "usage: tandem-test-server --listen IP:PORT [--writev] [--close-delay-ms N] \
                     [--upstream IP:PORT]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(Options {
        listen: listen.context("--listen IP:PORT is required")?,
        writev,
        close_delay,
        upstream,
    })
}

/// The body for `path`.
fn body_for(path: &str) -> Bytes {
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        const PATTERN: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let n = n.min(MAX_BODY);
        return PATTERN.iter().copied().cycle().take(n).collect();
    }
    Bytes::from(format!("hello from tandem-test-server: {path}\n"))
}

async fn handle(
    req: Request<Incoming>,
    upstream: Option<SocketAddr>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if let (Some(rest), Some(up)) = (path.strip_prefix("/call"), upstream) {
        let body = match call(up, rest).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("tandem-test-server: upstream call failed: {e:#}");
                let mut r = Response::new(Full::new(Bytes::from(format!("{e:#}\n"))));
                *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                return Ok(r);
            }
        };
        return Ok(Response::new(Full::new(body)));
    }
    Ok(Response::new(Full::new(body_for(path))))
}

/// `GET path` to `upstream` on a new connection; the response body.
async fn call(upstream: SocketAddr, path: &str) -> anyhow::Result<Bytes> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connect to {upstream}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", upstream.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    Ok(resp.into_body().collect().await?.to_bytes())
}

async fn serve(opts: Options) -> anyhow::Result<()> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}")?;
        out.flush()?;
    }
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let (writev, close_delay, upstream) = (opts.writev, opts.close_delay, opts.upstream);
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.keep_alive(true).writev(writev);
            let conn = builder.serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| handle(req, upstream)),
            );
            if close_delay.is_zero() {
                if let Err(e) = conn.await {
                    eprintln!("tandem-test-server: connection error: {e}");
                }
                return;
            }
            // Get the socket back when the client is done, and close it later.
            match conn.without_shutdown().await {
                Ok(parts) => {
                    tokio::time::sleep(close_delay).await;
                    drop(parts.io);
                }
                Err(e) => eprintln!("tandem-test-server: connection error: {e}"),
            }
        });
    }
}

fn main() -> std::process::ExitCode {
    let result = parse_args().and_then(|opts| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?
            .block_on(serve(opts))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-test-server: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
