//! `tandem-grpc-server`: a tonic gRPC server and client, and a plain h2c server, for
//! the HTTP/2 end-to-end tests (`tests/http2.rs`).
//!
//! ```text
//! tandem-grpc-server serve --grpc 127.0.0.1:PORT [--h2c 127.0.0.1:PORT]
//! tandem-grpc-server call --connect 127.0.0.1:PORT --name NAME [--count N]
//! ```
//!
//! * `serve`: `tandem.test.Greeter/SayHello` answers `hello <name>`, fails with
//!   NOT_FOUND for `missing` and INTERNAL for `boom` (proto/tandem_test.proto). With
//!   `--h2c`, a hyper HTTP/2-only (prior knowledge) server also answers any path:
//!   `200` with `h2c <method> <path>\n`, and `404` for `/missing`. Prints
//!   `listening grpc ADDR [h2c ADDR]` on stdout once bound.
//! * `call`: makes N unary calls on one HTTP/2 connection (one tonic channel) and
//!   prints `status <code> <message>` per call.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Status};

pub mod pb {
    tonic::include_proto!("tandem.test");
}

use pb::greeter_client::GreeterClient;
use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

#[derive(Debug, Default)]
struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        match name.as_str() {
            "missing" => Err(Status::new(Code::NotFound, "no such greeting")),
            "boom" => Err(Status::new(Code::Internal, "it broke")),
            _ => Ok(tonic::Response::new(HelloReply {
                message: format!("hello {name}"),
            })),
        }
    }
}

async fn h2c(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let status = if path == "/missing" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let body = format!("h2c {} {path}\n", req.method());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}

async fn serve_h2c(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let conn = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(h2c));
            if let Err(e) = conn.await {
                eprintln!("h2c connection: {e}");
            }
        });
    }
}

fn addr(value: Option<String>, flag: &str) -> anyhow::Result<SocketAddr> {
    let value = value.with_context(|| format!("{flag} needs an address"))?;
    value
        .parse()
        .with_context(|| format!("{flag} {value}: not an ip:port"))
}

async fn serve(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let mut grpc = None;
    let mut h2c_addr = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--grpc" => grpc = Some(addr(args.next(), "--grpc")?),
            "--h2c" => h2c_addr = Some(addr(args.next(), "--h2c")?),
            other => bail!("unknown argument {other}"),
        }
    }
    let grpc = grpc.context("--grpc is required")?;
    let listener = TcpListener::bind(grpc)
        .await
        .with_context(|| format!("bind {grpc}"))?;
    let mut line = format!("listening grpc {}", listener.local_addr()?);
    if let Some(a) = h2c_addr {
        let l = TcpListener::bind(a)
            .await
            .with_context(|| format!("bind {a}"))?;
        line.push_str(&format!(" h2c {}", l.local_addr()?));
        tokio::spawn(serve_h2c(l));
    }
    let mut out = std::io::stdout();
    writeln!(out, "{line}")?;
    out.flush()?;
    tonic::transport::Server::builder()
        .add_service(GreeterServer::new(Hello))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .context("gRPC server")?;
    Ok(())
}

async fn call(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let mut connect = None;
    let mut names = Vec::new();
    let mut count = 1u32;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--connect" => connect = Some(addr(args.next(), "--connect")?),
            "--name" => names.push(args.next().context("--name needs a value")?),
            "--count" => {
                count = args
                    .next()
                    .context("--count needs a number")?
                    .parse()
                    .context("--count")?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let connect = connect.context("--connect is required")?;
    if names.is_empty() {
        names.push("tandem".to_string());
    }
    let mut client = GreeterClient::connect(format!("http://{connect}"))
        .await
        .with_context(|| format!("connect to {connect}"))?;
    let mut out = std::io::stdout();
    for _ in 0..count {
        for name in &names {
            let reply = client.say_hello(HelloRequest { name: name.clone() }).await;
            match reply {
                Ok(r) => writeln!(out, "status 0 {}", r.into_inner().message)?,
                Err(s) => writeln!(out, "status {} {}", s.code() as i32, s.message())?,
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("serve") => serve(args).await,
        Some("call") => call(args).await,
        _ => bail!("usage: tandem-grpc-server serve --grpc ADDR [--h2c ADDR] | call --connect ADDR [--name N]... [--count N]"),
    }
}
