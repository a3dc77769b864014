//! Small real servers the tests script: HTTP/1.1 (OTLP/HTTP) and HTTP/2 (gRPC,
//! answering with real gRPC framing and trailers), counting requests and how many
//! were being answered at the same time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type Body = BoxBody<Bytes, Infallible>;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The answer to request number `n` (0-based): a response after a delay.
pub type Script = dyn Fn(usize, &Seen) -> (Duration, Response<Body>) + Send + Sync;

#[derive(Default)]
pub struct Record {
    pub requests: AtomicUsize,
    concurrent: AtomicUsize,
    pub max_concurrent: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
}

impl Record {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Serves HTTP/1.1 (`http2` false) or HTTP/2 with prior knowledge on `addr`
/// (127.0.0.1:0 for any port).
pub async fn serve(addr: &str, http2: bool, script: Arc<Script>) -> Server {
    let listener = TcpListener::bind(addr).await.expect("bind test server");
    serve_on(listener, http2, script)
}

pub fn serve_on(listener: TcpListener, http2: bool, script: Arc<Script>) -> Server {
    let addr = listener.local_addr().expect("local addr");
    let record = Arc::new(Record::default());
    let rec = record.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (rec, script) = (rec.clone(), script.clone());
            let service = hyper::service::service_fn(move |req| {
                let (rec, script) = (rec.clone(), script.clone());
                async move { Ok::<_, Infallible>(answer(req, &rec, &*script).await) }
            });
            let io = TokioIo::new(stream);
            tokio::spawn(async move {
                if http2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    Server { addr, record, task }
}

async fn answer(req: Request<Incoming>, rec: &Record, script: &Script) -> Response<Body> {
    let now = rec.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
    rec.max_concurrent.fetch_max(now, Ordering::SeqCst);
    let n = rec.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let seen = Seen {
        path,
        headers,
        body,
    };
    rec.seen.lock().expect("lock").push(seen.clone());
    let (delay, response) = script(n, &seen);
    tokio::time::sleep(delay).await;
    rec.concurrent.fetch_sub(1, Ordering::SeqCst);
    response
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// An HTTP response with a status, headers and a body.
pub fn http(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    for (k, v) in headers {
        r.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    r
}

/// A gRPC error answer ("trailers-only": the status in the headers).
pub fn grpc_status(status: tonic::Status) -> Response<Body> {
    status.into_http::<Body>()
}

/// A gRPC success answer: `message` (protobuf) framed, then `grpc-status: 0`.
pub fn grpc_ok(message: Vec<u8>) -> Response<Body> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).expect("len").to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from(framed))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut r = Response::new(StreamBody::new(futures::stream::iter(frames)).boxed());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

/// The message of a gRPC request body (one frame; gunzipped when flagged).
pub fn grpc_message(seen: &Seen) -> (bool, Bytes) {
    let mut b = seen.body.clone();
    assert!(b.len() >= 5, "short gRPC body: {b:?}");
    let compressed = b.get_u8() == 1;
    let len = b.get_u32() as usize;
    assert_eq!(b.len(), len, "one gRPC message per request");
    if compressed {
        (true, gunzip(&b))
    } else {
        (false, b)
    }
}

pub fn gunzip(data: &[u8]) -> Bytes {
    use std::io::Read;
    let mut out = vec![];
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out.into()
}

/// A port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}
