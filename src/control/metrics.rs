//! The Prometheus metrics (`metrics=ADDR:PORT`): the daemon's [`Status`] in the text
//! exposition format, and a small HTTP/1.1 responder for it on its own thread.
//!
//! Hand-written rather than through a metrics crate: every value already lives in the
//! core's atomics and reaches here as one `Status` (the same one `cachefs status` shows),
//! so a registry of the crate's own counter types would be a second copy to keep in step;
//! what is left is some thirty lines of text formatting, checked byte for byte by a golden
//! test. The responder answers `GET /metrics` (and `HEAD`), 405 for another method there,
//! 404 for any other path, one request per connection, one connection at a time, each
//! bounded in size and time, so a stuck client delays a scrape by seconds at most and
//! costs no thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::proto::Status;
use super::server::Handler;

/// The exposition format's content type (version 0.0.4, the text format).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The longest request head read; longer ones get 400.
const MAX_HEAD: usize = 8192;

/// How long one connection may take to send its request or take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What is read of a request's remainder after the answer, at most, and for how long.
const MAX_DRAIN: u64 = 64 << 10;
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// The exposition text being written.
struct Out(String);

impl Out {
    /// One metric family: its HELP and TYPE lines, then one sample per `(label, value)`;
    /// a label is `(name, value)`, or none.
    fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: &[(Option<(&str, &str)>, u64)],
    ) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (label, value) in samples {
            match label {
                Some((k, v)) => self
                    .0
                    .push_str(&format!("{name}{{{k}=\"{}\"}} {value}\n", escape(v))),
                None => self.0.push_str(&format!("{name} {value}\n")),
            }
        }
    }

    fn one(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help, &[(None, value)]);
    }
}

/// A label value as the format writes it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The metrics page for `s`. README's Metrics section lists the same names.
pub fn exposition(s: &Status) -> String {
    use Kind::{Counter, Gauge};
    let mut o = Out(String::new());
    o.0.push_str("# HELP cachefs_info The mount: its paths and the daemon's version.\n");
    o.0.push_str("# TYPE cachefs_info gauge\n");
    o.0.push_str(&format!(
        "cachefs_info{{mountpoint=\"{}\",source=\"{}\",cache=\"{}\",version=\"{}\"}} 1\n",
        escape(&s.mountpoint),
        escape(&s.source),
        escape(&s.cache),
        env!("CARGO_PKG_VERSION")
    ));
    let from = |cache: u64, source: u64| {
        [
            (Some(("from", "cache")), cache),
            (Some(("from", "source")), source),
        ]
    };
    o.family(
        "cachefs_opens_total",
        Counter,
        "Opens of regular files, by where they were served from (cache: hits, source: misses).",
        &from(s.hits, s.misses),
    );
    o.one(
        "cachefs_passthrough_opens_total",
        Counter,
        "Opens of cached copies the kernel serves by passthrough (among the cache opens).",
        s.passthrough_opens,
    );
    o.family(
        "cachefs_read_bytes_total",
        Counter,
        "Bytes the daemon read for callers, by where from (passthrough reads never reach it).",
        &from(s.cache_read_bytes, s.source_read_bytes),
    );
    o.one(
        "cachefs_passthrough_offered_bytes_total",
        Counter,
        "Sizes of the files of passthrough opens: at most what those opens read from copies.",
        s.passthrough_bytes,
    );
    o.one(
        "cachefs_cached_bytes",
        Gauge,
        "Bytes of the cached copies.",
        s.cached_bytes,
    );
    o.one(
        "cachefs_cached_files",
        Gauge,
        "Cached copies.",
        s.cached_files,
    );
    o.one(
        "cachefs_pinned_files",
        Gauge,
        "Pinned files, cached or not yet.",
        s.pinned_files,
    );
    if s.max_size > 0 {
        o.one(
            "cachefs_max_size_bytes",
            Gauge,
            "The max_size limit (absent when there is none).",
            s.max_size,
        );
    }
    o.one(
        "cachefs_min_free_bytes",
        Gauge,
        "Free space kept on the cache filesystem (min_free, in bytes).",
        s.min_free,
    );
    o.one(
        "cachefs_cache_fs_avail_bytes",
        Gauge,
        "Available bytes on the cache filesystem.",
        s.cache_fs_avail,
    );
    o.one(
        "cachefs_cache_fs_size_bytes",
        Gauge,
        "Size of the cache filesystem.",
        s.cache_fs_size,
    );
    o.family(
        "cachefs_promotions_total",
        Counter,
        "Promotions finished, by result (cancelled ones are neither).",
        &[
            (Some(("result", "done")), s.promotions_done),
            (Some(("result", "failed")), s.promotions_failed),
        ],
    );
    o.one(
        "cachefs_promoted_bytes_total",
        Counter,
        "Bytes of the copies promotions published.",
        s.promoted_bytes,
    );
    o.one(
        "cachefs_promoter_read_bytes_total",
        Counter,
        "Bytes the promoter read from SOURCE, failed and cancelled copies included.",
        s.promoter_read_bytes,
    );
    o.one(
        "cachefs_promotions_queued",
        Gauge,
        "Promotions waiting for a worker.",
        s.queued,
    );
    o.one(
        "cachefs_promotions_running",
        Gauge,
        "Promotions copying now.",
        s.in_flight.len() as u64,
    );
    o.one(
        "cachefs_promotions_running_copied_bytes",
        Gauge,
        "Bytes the promotions running now have copied.",
        s.in_flight.iter().map(|p| p.bytes_done).sum(),
    );
    o.one(
        "cachefs_promotions_running_size_bytes",
        Gauge,
        "Sizes of the files the promotions running now copy.",
        s.in_flight.iter().map(|p| p.bytes_total).sum(),
    );
    o.one(
        "cachefs_evictions_total",
        Counter,
        "Copies dropped to make room, for max_age, or by cachefs evict.",
        s.evictions,
    );
    o.one(
        "cachefs_passthrough",
        Gauge,
        "1 if the kernel agreed to FUSE passthrough for cached reads.",
        u64::from(s.passthrough),
    );
    o.one(
        "cachefs_cache_usable",
        Gauge,
        "1 while the cache is usable; 0: degraded, everything is served from SOURCE.",
        u64::from(s.cache_usable),
    );
    o.one(
        "cachefs_source_lookups_total",
        Counter,
        "Names resolved against SOURCE (lookups, readdirplus entries), not from memory.",
        s.source_lookups,
    );
    o.one(
        "cachefs_source_up",
        Gauge,
        "1 while SOURCE answers; 0 once a call to it has been in flight for more than 3 s.",
        u64::from(s.source_answering),
    );
    o.one(
        "cachefs_source_stalled_since_seconds",
        Gauge,
        "When SOURCE stopped answering (unix time); 0 while it answers.",
        s.source_stalled_since,
    );
    o.one(
        "cachefs_source_in_flight",
        Gauge,
        "Calls to SOURCE in flight now.",
        s.source_in_flight,
    );
    o.one(
        "cachefs_source_waiting",
        Gauge,
        "Requests waiting for a thread to call SOURCE.",
        s.source_waiting,
    );
    let ops: Vec<(Option<(&str, &str)>, u64)> = s
        .source_ops
        .iter()
        .map(|(op, n)| (Some(("op", op.as_str())), *n))
        .collect();
    o.family(
        "cachefs_source_ops_total",
        Counter,
        "Requests that needed SOURCE, by operation; the cache and memory answered the rest.",
        &ops,
    );
    o.family(
        "cachefs_meta_requests_total",
        Counter,
        "Questions to the metadata cache (meta_ttl), by whether it could answer.",
        &[
            (Some(("result", "hit")), s.meta_hits),
            (Some(("result", "miss")), s.meta_misses),
        ],
    );
    o.one(
        "cachefs_meta_objects",
        Gauge,
        "Objects the metadata cache holds.",
        s.meta_nodes,
    );
    o.one(
        "cachefs_inodes",
        Gauge,
        "Inodes the kernel remembers.",
        s.inodes,
    );
    o.family(
        "cachefs_source_fds",
        Gauge,
        "Descriptors of SOURCE objects the daemon holds: cached for reuse, or kept for open files.",
        &[
            (Some(("state", "cached")), s.fds_cached),
            (Some(("state", "open")), s.fds_pinned),
        ],
    );
    o.one(
        "cachefs_source_fds_bound",
        Gauge,
        "The bound of the cache of SOURCE descriptors.",
        s.fds_bound,
    );
    o.one(
        "cachefs_fd_limit",
        Gauge,
        "The daemon's descriptor limit.",
        s.fd_limit,
    );
    o.one(
        "cachefs_source_fd_reopens_total",
        Counter,
        "SOURCE objects reopened (by handle, or parent and name).",
        s.fds_reopened,
    );
    o.one(
        "cachefs_source_fd_sheds_total",
        Counter,
        "Times the descriptor cache was shed because descriptors ran short.",
        s.fds_shed,
    );
    o.0
}

/// The running listener; its thread lives as long as the process.
pub struct MetricsServer {
    addr: SocketAddr,
}

impl MetricsServer {
    /// The address bound (with the port the kernel chose, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` (`ADDR:PORT`, a name resolved here) and serves the metrics from
/// `handler`'s status on a thread of its own.
pub fn serve_metrics(addr: &str, handler: Arc<dyn Handler>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &*handler) {
                            tracing::debug!("metrics: {e}");
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: do not spin.
                        tracing::warn!("metrics: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(MetricsServer { addr: bound })
}

/// What one request gets.
struct Response {
    /// The status line's code and reason.
    status: &'static str,
    /// Send an `Allow` header (a 405).
    allow: bool,
    body: String,
    /// A HEAD request: the headers only.
    head_only: bool,
}

/// The answer to one request head (the bytes up to the blank line).
fn respond(head: &[u8], status: &dyn Fn() -> Status) -> Response {
    let plain = |status, body: &str| Response {
        status,
        allow: false,
        body: body.to_string(),
        head_only: false,
    };
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return plain("400 Bad Request", "bad request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return plain("400 Bad Request", "bad request\n");
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return plain("404 Not Found", "not found: the metrics are at /metrics\n");
    }
    match method {
        "GET" | "HEAD" => Response {
            status: "200 OK",
            allow: false,
            body: exposition(&status()),
            head_only: method == "HEAD",
        },
        _ => Response {
            allow: true,
            ..plain("405 Method Not Allowed", "method not allowed: use GET\n")
        },
    }
}

/// The response's bytes.
fn encode(r: &Response) -> Vec<u8> {
    let content_type = if r.status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        r.status,
        r.body.len()
    );
    if r.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if !r.head_only {
        out.push_str(&r.body);
    }
    out.into_bytes()
}

/// Reads the request head (up to the blank line, bounded), answers, closes.
fn answer(mut stream: TcpStream, handler: &dyn Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break !head.is_empty();
        }
        head.extend_from_slice(&buf[..n]);
    };
    let response = if complete {
        respond(&head, &|| handler.status())
    } else {
        Response {
            status: "400 Bad Request",
            allow: false,
            body: "request head too long\n".into(),
            head_only: false,
        }
    };
    stream.write_all(&encode(&response))?;
    // Closing with unread bytes (a request body) would reset the connection, and a client
    // could lose the answer: end our side, then drain a little of theirs.
    stream.shutdown(std::net::Shutdown::Write)?;
    stream.set_read_timeout(Some(DRAIN_TIMEOUT))?;
    let _ = io::copy(&mut (&stream).take(MAX_DRAIN), &mut io::sink());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cachefs status`'s busy sample, with label values that need escaping.
    fn sample() -> Status {
        Status {
            mountpoint: "/mnt/media \"x\"".into(),
            cache: "C:\\ssd\nnext".into(),
            promotions_failed: 1,
            evictions: 4,
            fds_reopened: 11,
            ..crate::control::render::tests::busy()
        }
    }

    #[test]
    fn golden_exposition() {
        let want = format!(
            r#"# HELP cachefs_info The mount: its paths and the daemon's version.
# TYPE cachefs_info gauge
cachefs_info{{mountpoint="/mnt/media \"x\"",source="/mnt/hdd",cache="C:\\ssd\nnext",version="{}"}} 1
# HELP cachefs_opens_total Opens of regular files, by where they were served from (cache: hits, source: misses).
# TYPE cachefs_opens_total counter
cachefs_opens_total{{from="cache"}} 3
cachefs_opens_total{{from="source"}} 1
# HELP cachefs_passthrough_opens_total Opens of cached copies the kernel serves by passthrough (among the cache opens).
# TYPE cachefs_passthrough_opens_total counter
cachefs_passthrough_opens_total 2
# HELP cachefs_read_bytes_total Bytes the daemon read for callers, by where from (passthrough reads never reach it).
# TYPE cachefs_read_bytes_total counter
cachefs_read_bytes_total{{from="cache"}} 1073741824
cachefs_read_bytes_total{{from="source"}} 1073741824
# HELP cachefs_passthrough_offered_bytes_total Sizes of the files of passthrough opens: at most what those opens read from copies.
# TYPE cachefs_passthrough_offered_bytes_total counter
cachefs_passthrough_offered_bytes_total 3221225472
# HELP cachefs_cached_bytes Bytes of the cached copies.
# TYPE cachefs_cached_bytes gauge
cachefs_cached_bytes 2147483648
# HELP cachefs_cached_files Cached copies.
# TYPE cachefs_cached_files gauge
cachefs_cached_files 12
# HELP cachefs_pinned_files Pinned files, cached or not yet.
# TYPE cachefs_pinned_files gauge
cachefs_pinned_files 1
# HELP cachefs_max_size_bytes The max_size limit (absent when there is none).
# TYPE cachefs_max_size_bytes gauge
cachefs_max_size_bytes 8589934592
# HELP cachefs_min_free_bytes Free space kept on the cache filesystem (min_free, in bytes).
# TYPE cachefs_min_free_bytes gauge
cachefs_min_free_bytes 10737418240
# HELP cachefs_cache_fs_avail_bytes Available bytes on the cache filesystem.
# TYPE cachefs_cache_fs_avail_bytes gauge
cachefs_cache_fs_avail_bytes 42949672960
# HELP cachefs_cache_fs_size_bytes Size of the cache filesystem.
# TYPE cachefs_cache_fs_size_bytes gauge
cachefs_cache_fs_size_bytes 107374182400
# HELP cachefs_promotions_total Promotions finished, by result (cancelled ones are neither).
# TYPE cachefs_promotions_total counter
cachefs_promotions_total{{result="done"}} 2
cachefs_promotions_total{{result="failed"}} 1
# HELP cachefs_promoted_bytes_total Bytes of the copies promotions published.
# TYPE cachefs_promoted_bytes_total counter
cachefs_promoted_bytes_total 1610612736
# HELP cachefs_promoter_read_bytes_total Bytes the promoter read from SOURCE, failed and cancelled copies included.
# TYPE cachefs_promoter_read_bytes_total counter
cachefs_promoter_read_bytes_total 1677721600
# HELP cachefs_promotions_queued Promotions waiting for a worker.
# TYPE cachefs_promotions_queued gauge
cachefs_promotions_queued 1
# HELP cachefs_promotions_running Promotions copying now.
# TYPE cachefs_promotions_running gauge
cachefs_promotions_running 2
# HELP cachefs_promotions_running_copied_bytes Bytes the promotions running now have copied.
# TYPE cachefs_promotions_running_copied_bytes gauge
cachefs_promotions_running_copied_bytes 330301440
# HELP cachefs_promotions_running_size_bytes Sizes of the files the promotions running now copy.
# TYPE cachefs_promotions_running_size_bytes gauge
cachefs_promotions_running_size_bytes 1415577600
# HELP cachefs_evictions_total Copies dropped to make room, for max_age, or by cachefs evict.
# TYPE cachefs_evictions_total counter
cachefs_evictions_total 4
# HELP cachefs_passthrough 1 if the kernel agreed to FUSE passthrough for cached reads.
# TYPE cachefs_passthrough gauge
cachefs_passthrough 1
# HELP cachefs_cache_usable 1 while the cache is usable; 0: degraded, everything is served from SOURCE.
# TYPE cachefs_cache_usable gauge
cachefs_cache_usable 1
# HELP cachefs_source_lookups_total Names resolved against SOURCE (lookups, readdirplus entries), not from memory.
# TYPE cachefs_source_lookups_total counter
cachefs_source_lookups_total 120
# HELP cachefs_source_up 1 while SOURCE answers; 0 once a call to it has been in flight for more than 3 s.
# TYPE cachefs_source_up gauge
cachefs_source_up 1
# HELP cachefs_source_stalled_since_seconds When SOURCE stopped answering (unix time); 0 while it answers.
# TYPE cachefs_source_stalled_since_seconds gauge
cachefs_source_stalled_since_seconds 0
# HELP cachefs_source_in_flight Calls to SOURCE in flight now.
# TYPE cachefs_source_in_flight gauge
cachefs_source_in_flight 0
# HELP cachefs_source_waiting Requests waiting for a thread to call SOURCE.
# TYPE cachefs_source_waiting gauge
cachefs_source_waiting 0
# HELP cachefs_source_ops_total Requests that needed SOURCE, by operation; the cache and memory answered the rest.
# TYPE cachefs_source_ops_total counter
cachefs_source_ops_total{{op="lookup"}} 120
cachefs_source_ops_total{{op="read"}} 8
# HELP cachefs_meta_requests_total Questions to the metadata cache (meta_ttl), by whether it could answer.
# TYPE cachefs_meta_requests_total counter
cachefs_meta_requests_total{{result="hit"}} 40
cachefs_meta_requests_total{{result="miss"}} 9
# HELP cachefs_meta_objects Objects the metadata cache holds.
# TYPE cachefs_meta_objects gauge
cachefs_meta_objects 300
# HELP cachefs_inodes Inodes the kernel remembers.
# TYPE cachefs_inodes gauge
cachefs_inodes 7
# HELP cachefs_source_fds Descriptors of SOURCE objects the daemon holds: cached for reuse, or kept for open files.
# TYPE cachefs_source_fds gauge
cachefs_source_fds{{state="cached"}} 3
cachefs_source_fds{{state="open"}} 1
# HELP cachefs_source_fds_bound The bound of the cache of SOURCE descriptors.
# TYPE cachefs_source_fds_bound gauge
cachefs_source_fds_bound 480
# HELP cachefs_fd_limit The daemon's descriptor limit.
# TYPE cachefs_fd_limit gauge
cachefs_fd_limit 1024
# HELP cachefs_source_fd_reopens_total SOURCE objects reopened (by handle, or parent and name).
# TYPE cachefs_source_fd_reopens_total counter
cachefs_source_fd_reopens_total 11
# HELP cachefs_source_fd_sheds_total Times the descriptor cache was shed because descriptors ran short.
# TYPE cachefs_source_fd_sheds_total counter
cachefs_source_fd_sheds_total 0
"#,
            env!("CARGO_PKG_VERSION")
        );
        let got = exposition(&sample());
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got, want);

        // No max_size: no limit series, rather than a limit of 0.
        let unlimited = Status {
            max_size: 0,
            ..sample()
        };
        assert!(!exposition(&unlimited).contains("cachefs_max_size_bytes"));
    }

    #[test]
    fn every_family_is_documented_and_typed() {
        let text = exposition(&sample());
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    kind == "counter" && name.ends_with("_total")
                        || kind == "gauge" && !name.ends_with("_total"),
                    "{line}"
                );
                families.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(&name.to_string()), families.last(), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
        let readme = include_str!("../../README.md");
        for f in &families {
            assert!(readme.contains(&format!("`{f}`")), "README lacks {f}");
        }
        let dashboard = include_str!("../../scripts/grafana-cachefs.json");
        assert!(serde_json::from_str::<serde_json::Value>(dashboard).is_ok());
        for name in dashboard.split("cachefs_").skip(1) {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = format!("cachefs_{name}");
            assert!(
                families.contains(&name) || name == "cachefs_",
                "the dashboard names {name}, which is not a metric"
            );
        }
    }

    fn head(req: &str) -> String {
        let fake = sample();
        String::from_utf8(encode(&respond(req.as_bytes(), &|| fake.clone()))).unwrap()
    }

    #[test]
    fn responses() {
        let body = exposition(&sample());
        assert_eq!(
            head("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
        );
        assert!(head("GET /metrics?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
        let h = head("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\n") && h.ends_with("\r\n\r\n"),
            "{h}"
        );
        assert!(h.contains(&format!("Content-Length: {}\r\n", body.len())));
        for (req, want) in [
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found\r\n"),
            (
                "GET /metricsx HTTP/1.1\r\n\r\n",
                "HTTP/1.1 404 Not Found\r\n",
            ),
            ("GET /other HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found\r\n"),
            (
                "POST /metrics HTTP/1.1\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed\r\n",
            ),
            ("GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
            (
                "GET /metrics SPDY/3\r\n\r\n",
                "HTTP/1.1 400 Bad Request\r\n",
            ),
            ("\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
        ] {
            let h = head(req);
            assert!(h.starts_with(want), "{req:?}: {h}");
            assert!(!h.contains("cachefs_"), "{req:?}: {h}");
        }
        assert!(head("PUT /metrics HTTP/1.1\r\n\r\n").contains("Allow: GET, HEAD\r\n"));
    }
}
