//! `tandem-test-server`: a small hyper 1 HTTP/1.1 server for the capture tests.
//!
//! ```text
//! tandem-test-server --listen 127.0.0.1:8080 [--writev] [--close-delay-ms N]
//! ```
//!
//! * `GET /bytes/N` answers `200` with an `N`-byte body (a repeating `0-9a-z` pattern);
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
}

fn parse_args() -> anyhow::Result<Options> {
    let mut listen = None;
    let mut writev = false;
    let mut close_delay = Duration::ZERO;
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
            "-h" | "--help" => {
                println!(
                    "usage: tandem-test-server --listen IP:PORT [--writev] [--close-delay-ms N]"
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

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(body_for(req.uri().path()))))
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
        let (writev, close_delay) = (opts.writev, opts.close_delay);
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder.keep_alive(true).writev(writev);
            let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handle));
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
