//! Go programs built for the tests with Debian's `golang-go` (Go 1.19), offline
//! (`GOPROXY=off`, GOPATH mode), each in its own directory and build cache.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A net/http HTTPS server: `server PORT CERT KEY` serves `/hello` (a fixed body)
/// and answers 404 elsewhere, on 127.0.0.1 (HTTP/2 when the client offers h2).
pub const HTTPS_SERVER: &str = r#"package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from go over TLS\n") })
	fmt.Println(http.ListenAndServeTLS("127.0.0.1:"+os.Args[1], os.Args[2], os.Args[3], nil))
}
"#;

/// The body of [`HTTPS_SERVER`]'s `/hello`.
pub const HELLO_BODY: &str = "hello from go over TLS\n";

/// `go build -ldflags LDFLAGS` of `source` into `dir/name`.
pub fn build(dir: &Path, source: &str, name: &str, ldflags: &str) -> PathBuf {
    let src_dir = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src_dir).expect("create the source directory");
    let src = src_dir.join("main.go");
    std::fs::write(&src, source).expect("write main.go");
    let out = dir.join(name);
    let run = Command::new("go")
        .args(["build", "-ldflags", ldflags, "-o"])
        .arg(&out)
        .arg(&src)
        .env("GOPROXY", "off")
        .env("GO111MODULE", "off")
        // One build cache for every test (go locks it): grpc-go builds once.
        .env(
            "GOCACHE",
            std::env::temp_dir().join("tandem-go-build-cache"),
        )
        .env("GOPATH", "/usr/share/gocode")
        .env("HOME", dir)
        .output()
        .expect("go build (scripts/setup.sh installs golang-go)");
    assert!(
        run.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}
