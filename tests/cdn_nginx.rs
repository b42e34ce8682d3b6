//! A CDN in front of a node: a real nginx (Debian's, at `/usr/sbin/nginx`; `scripts/nginx-up`
//! installs it) with `proxy_cache` in front of a real file-backed `bunting serve`, configured as
//! README.md's "Behind a CDN" shows. A flag set's definition is cached for its max-age, then
//! revalidated with a 304 from the node, and an edit of the flags file shows through the cache
//! within max-age (plus nginx's whole-second clock and the file's poll), never later.
//!
//! nginx runs in the foreground as this test's own process (`daemon off; master_process off;`),
//! with its config, pid file, logs and cache in a scratch directory, on a spare loopback port; its
//! access log records each request's tag, status, cache status and upstream status, so the test
//! sees which requests reached the node and what the node answered.

// Tests report failures by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{Answer, send};
use common::{Guarded, Serve, scratch_dir, spare_port};
use serde_json::{Value, json};

const NGINX: &str = "/usr/sbin/nginx";

/// The definition's `Cache-Control: max-age` the node is configured with.
const MAX_AGE: Duration = Duration::from_secs(2);

/// nginx keeps time in whole seconds: an answer cached at second T with max-age 2 is fresh until
/// the end of second T+2, so up to one second longer than its max-age.
const CLOCK_GRAIN: Duration = Duration::from_secs(1);

/// Room for a loaded machine (two shared cores) in bounds that are otherwise exact; small next to
/// what they bound, so a cache that ignored max-age would still fail them.
const SLACK: Duration = Duration::from_millis(1500);

/// The node's flags file poll (`bunting_stores::file::POLL_INTERVAL`).
const FILE_POLL: Duration = bunting_stores::file::POLL_INTERVAL;

const PATH: &str = "/v1/flag-sets/default";

fn flags(greeting: &str) -> Value {
    json!({"flags": {"greeting": {"state": "ENABLED", "defaultVariant": "hi",
        "variants": {"hi": greeting, "bye": "bye"}}}})
}

fn write(path: &Path, document: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, document.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The nginx config README.md documents, for a node at `upstream`, with every file it writes
/// under `dir`.
fn nginx_config(dir: &Path, listen: u16, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;

events {{
    worker_connections 64;
}}

http {{
    # Which requests reached the node: $upstream_status is "-" for a cache hit, 304 for a
    # revalidation the node confirmed, 200 when it sent a (new) definition.
    log_format cdn '$http_x_test_request $status cache=$upstream_cache_status upstream=$upstream_status etag=$sent_http_etag';
    access_log {d}/access.log cdn;

    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    proxy_cache_path {d}/cache levels=1:2 keys_zone=bunting:1m max_size=64m inactive=10m use_temp_path=off;

    upstream bunting {{
        server {upstream};
        keepalive 8;
    }}

    server {{
        listen 127.0.0.1:{listen};

        # Flag-set definitions: public, cached for the node's max-age, revalidated with ETags.
        location /v1/flag-sets/ {{
            proxy_pass http://bunting;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bunting;
            # The credential is part of the key: one copy per token (README: credentials).
            proxy_cache_key $scheme$proxy_host$request_uri$http_authorization$http_x_api_key;
            # How long: the node's Cache-Control (nginx honours it; no proxy_ignore_headers).
            # proxy_cache_valid applies only to answers without one: never store those.
            proxy_cache_valid any 0;
            # Expired: ask the node with If-None-Match; a 304 refreshes the cached copy.
            proxy_cache_revalidate on;
            # One request per definition goes to the node however many clients miss at once.
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}

        # Bulk evaluation and event streams: per caller, never stored here.
        location /ofrep/ {{
            proxy_pass http://bunting;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    )
}

/// nginx in the foreground, killed however the test ends.
struct Nginx {
    _process: Guarded,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(dir: &Path, upstream: SocketAddr) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run scripts/nginx-up (scripts/test does) to install it"
        );
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = spare_port(0);
        let config = dir.join("nginx.conf");
        std::fs::write(&config, nginx_config(dir, port, upstream)).unwrap();
        let output = std::fs::File::create(dir.join("nginx.out")).unwrap();
        let mut command = Command::new(NGINX);
        command
            // -e: the log for errors before the config is read (the default is under /var/log).
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .stdin(Stdio::null());
        let mut process = Guarded::spawn(command, "nginx");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = process.exited() {
                panic!(
                    "nginx exited ({status}):\n{}\n{}",
                    common::read_log(&dir.join("nginx.out")),
                    common::read_log(&dir.join("error.log"))
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}:\n{}",
                common::read_log(&dir.join("error.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            _process: process,
            addr,
            dir: dir.to_owned(),
        }
    }

    /// The access log's line for the request tagged `tag`: nginx writes it before it closes the
    /// connection, so it is there once the answer has been read.
    fn logged(&self, tag: &str) -> Logged {
        let log = common::read_log(&self.dir.join("access.log"));
        let line = log
            .lines()
            .find(|l| l.split(' ').next() == Some(tag))
            .unwrap_or_else(|| panic!("no access log line for request {tag}:\n{log}"));
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .to_owned()
        };
        Logged {
            cache: field("cache="),
            upstream: field("upstream="),
            line: line.to_owned(),
        }
    }
}

#[derive(Debug)]
struct Logged {
    cache: String,
    upstream: String,
    line: String,
}

/// One request through nginx, tagged so its access log line can be found.
struct Client {
    nginx: SocketAddr,
    sent: usize,
}

impl Client {
    async fn get(&mut self) -> (String, Answer) {
        self.get_with(&[]).await
    }

    async fn get_with(&mut self, headers: &[(&str, &str)]) -> (String, Answer) {
        self.sent += 1;
        let tag = format!("req-{}", self.sent);
        let mut all = vec![("x-test-request", tag.as_str())];
        all.extend_from_slice(headers);
        let answer = send(self.nginx, "GET", PATH, &all, &[]).await;
        assert_eq!(
            answer.status,
            200,
            "{tag}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        (tag, answer)
    }
}

fn greeting(answer: &Answer) -> String {
    answer.json()["flags"]["greeting"]["variants"]["hi"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn cache_status(answer: &Answer) -> &str {
    answer.header("x-cache-status").unwrap_or("(none)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_caches_definitions_for_max_age_revalidates_with_304_and_shows_changes() {
    let dir = scratch_dir("cdn-nginx");
    let file = dir.join("flags.json");
    write(&file, &flags("hello"));
    let node = Serve::new(&file)
        .config(&format!(
            "[http]\ndefinition_max_age_secs = {}",
            MAX_AGE.as_secs()
        ))
        .start(&dir);
    let origin = SocketAddr::from((Ipv4Addr::LOCALHOST, node.http_port()));
    let nginx = Nginx::start(&dir.join("nginx"), origin);
    let mut client = Client {
        nginx: nginx.addr,
        sent: 0,
    };

    // The node's own answer, for comparison.
    let direct = send(origin, "GET", PATH, &[], &[]).await;
    assert_eq!(direct.status, 200, "{}", node.log());
    assert_eq!(
        direct.header("cache-control"),
        Some(format!("public, max-age={}", MAX_AGE.as_secs()).as_str())
    );
    let etag = direct.header("etag").unwrap().to_owned();

    // A miss fills the cache from the node. Ages are counted from before the request, so they
    // are never less than the cached copy's own.
    let filled = Instant::now();
    let (tag, first) = client.get().await;
    assert_eq!(cache_status(&first), "MISS");
    assert_eq!(greeting(&first), "hello");
    assert_eq!(first.header("etag"), Some(etag.as_str()));
    let logged = nginx.logged(&tag);
    assert_eq!(
        (logged.cache.as_str(), logged.upstream.as_str()),
        ("MISS", "200"),
        "{}",
        logged.line
    );

    // Within max-age: served by nginx alone.
    let (tag, second) = client.get().await;
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("etag"), Some(etag.as_str()));
    // (Unless this machine stalled past max-age between the two requests.)
    if filled.elapsed() < MAX_AGE {
        assert_eq!(cache_status(&second), "HIT");
        let logged = nginx.logged(&tag);
        assert_eq!(
            logged.upstream, "-",
            "a hit must not reach the node: {}",
            logged.line
        );
    }

    // Hits until max-age has passed, then one revalidation the node answers 304.
    let (refreshed, revalidated) = loop {
        let asked = Instant::now();
        let (tag, answer) = client.get().await;
        let age = filled.elapsed();
        let status = cache_status(&answer).to_owned();
        if status == "HIT" {
            assert!(
                age <= MAX_AGE + CLOCK_GRAIN + SLACK,
                "still a hit {age:?} after the cache was filled (max-age {MAX_AGE:?})"
            );
            assert_eq!(nginx.logged(&tag).upstream, "-");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(
            status, "REVALIDATED",
            "after max-age the cached copy is revalidated"
        );
        assert!(
            age >= MAX_AGE,
            "revalidated after {age:?}, before max-age {MAX_AGE:?} ran out"
        );
        let logged = nginx.logged(&tag);
        assert_eq!(
            logged.upstream, "304",
            "the node confirms the copy: {}",
            logged.line
        );
        break (asked, answer);
    };
    assert_eq!(revalidated.body, first.body);
    assert_eq!(revalidated.header("etag"), Some(etag.as_str()));
    // The 304 made the copy fresh again.
    let (tag, again) = client.get().await;
    if refreshed.elapsed() < MAX_AGE {
        assert_eq!(cache_status(&again), "HIT", "{}", nginx.logged(&tag).line);
    }

    // An edit shows through the cache within max-age (plus nginx's clock grain and the file's
    // poll), and the old definition is never served after that.
    write(&file, &flags("changed"));
    let changed = Instant::now();
    let bound = MAX_AGE + CLOCK_GRAIN + FILE_POLL + SLACK;
    let (tag, new) = loop {
        let (tag, answer) = client.get().await;
        if greeting(&answer) == "changed" {
            break (tag, answer);
        }
        assert_eq!(greeting(&answer), "hello");
        assert!(
            changed.elapsed() <= bound,
            "the old definition still served {:?} after the edit ({:?} after the last \
             revalidation; max-age {MAX_AGE:?}): {}",
            changed.elapsed(),
            refreshed.elapsed(),
            nginx.logged(&tag).line
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_etag = new.header("etag").unwrap().to_owned();
    assert_ne!(new_etag, etag, "a new definition has a new validator");
    let logged = nginx.logged(&tag);
    assert_eq!(
        (logged.cache.as_str(), logged.upstream.as_str()),
        ("EXPIRED", "200"),
        "the revalidation brought the new definition: {}",
        logged.line
    );
    let direct = send(origin, "GET", PATH, &[], &[]).await;
    assert_eq!(direct.header("etag"), Some(new_etag.as_str()));
    assert_eq!(direct.body, new.body);
    // From now on only the new definition, from the cache.
    for _ in 0..5 {
        let (tag, answer) = client.get().await;
        assert_eq!(greeting(&answer), "changed", "{}", nginx.logged(&tag).line);
        assert_eq!(answer.header("etag"), Some(new_etag.as_str()));
    }

    // Another credential is another copy: its own miss, then its own hits.
    let bearer = format!("Bearer {}", common::TEST_TOKEN);
    let credential = [("authorization", bearer.as_str())];
    let (tag, answer) = client.get_with(&credential).await;
    assert_eq!(cache_status(&answer), "MISS", "{}", nginx.logged(&tag).line);
    let (tag, answer) = client.get_with(&credential).await;
    assert_eq!(cache_status(&answer), "HIT", "{}", nginx.logged(&tag).line);
    assert_eq!(answer.header("etag"), Some(new_etag.as_str()));
    drop(nginx);
    drop(node);
}
