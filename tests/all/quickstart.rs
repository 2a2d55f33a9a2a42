//! The first ten minutes, as a new user meets them: the README's quick
//! start run for real. `sluice dev` (the `sluice` binary cargo built next to
//! this test binary) starts in an empty folder; the client command it
//! prints is run through a shell with the README's example messages on
//! stdin and must print the README's answers. Then the README's second
//! tenant: `sluice tenant create` over HTTPS against the dev server, a token
//! minted with the generated secret, a chat on the new tenant; the CLI's
//! refusals (409 exists, 409 conflict, 422 with every problem, plain HTTP);
//! and a restart that keeps the demo tenant of the store. Also: a busy port,
//! the dev certificate's validity and renewal, and `sluice connect` without
//! `--ca`.
//!
//! Needs the `sluice` binary of this build: `tests/run` builds it
//! (`cargo build --workspace --bin sluice`) before `cargo test`.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use sluice::client::ClientOptions;
use sluice_tests::server::{TempDir, TestServer};

/// Until the banner: includes building the demo handlers on a cold machine.
const BANNER_TIMEOUT: Duration = Duration::from_secs(600);
/// A client command, a refused start: seconds in practice.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The frame types a server sends; every other line of the README's
/// transcript is something the user types.
const SERVER_FRAMES: [&str; 7] = [
    "welcome",
    "ack",
    "error",
    "event",
    "pong",
    "subscribed",
    "join",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README's example conversation: (what the user types, what the
/// server answers), from between the `quickstart-transcript` markers.
fn readme_transcript() -> (Vec<String>, Vec<String>) {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find("<!-- quickstart-transcript: begin -->")
        .expect("README.md has the quickstart-transcript begin marker");
    let end = readme
        .find("<!-- quickstart-transcript: end -->")
        .expect("README.md has the quickstart-transcript end marker");
    let (mut typed, mut answers) = (Vec::new(), Vec::new());
    for line in readme[start..end].lines().skip(1) {
        if line.starts_with("```") || line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("README transcript line {line:?} is not JSON: {e}"));
        let ty = value["type"].as_str().unwrap_or_default();
        if SERVER_FRAMES.contains(&ty) {
            answers.push(line.to_owned());
        } else {
            typed.push(line.to_owned());
        }
    }
    assert!(
        typed.len() >= 3 && answers.len() > typed.len(),
        "the README's transcript is too short: {typed:?} {answers:?}"
    );
    (typed, answers)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A frame with what differs between runs (the connection id, the time a
/// message was sent, the token's expiry, a channel's epoch) replaced by 0 — in a frame from the
/// server after checking it is plausible — as compact JSON.
fn normalise(frame: &str, from_server: bool) -> String {
    fn walk(value: &mut Value, from_server: bool) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    let check: Option<fn(u64) -> bool> = match key.as_str() {
                        "connection_id" => Some(|_| true),
                        "at" => Some(|ms| (ms / 1000).abs_diff(unix_now()) < 300),
                        "expires_at" => Some(|s| s.abs_diff(unix_now() + 3600) < 300),
                        _ => None,
                    };
                    if key == "epoch"
                        && let Some(epoch) = v.as_str()
                    {
                        // A channel's epoch is new with every data_dir.
                        assert!(
                            epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
                            "epoch {epoch:?} is implausible"
                        );
                        *v = Value::from("e");
                        continue;
                    }
                    match (check, v.as_u64()) {
                        (Some(check), Some(n)) => {
                            assert!(!from_server || check(n), "{key} = {n} is implausible");
                            *v = Value::from(0);
                        }
                        _ => walk(v, from_server),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, from_server)),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_str(frame)
        .unwrap_or_else(|e| panic!("{frame:?} is not a JSON frame: {e}"));
    walk(&mut value, from_server);
    value.to_string()
}

/// A `sluice dev` process, killed on drop.
struct Dev {
    child: Child,
    stdout: Receiver<String>,
    /// Everything printed before the end of the banner.
    banner: Vec<String>,
}

impl Dev {
    fn spawn(cwd: &Path, args: &[&str]) -> Child {
        Command::new(sluice_tests::sluice_bin())
            .arg("dev")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sluice dev")
    }

    /// Start `sluice dev` on a free port in `cwd` and wait for its banner
    /// (up to the line suggesting more tokens).
    fn start(cwd: &Path) -> Self {
        let mut child = Self::spawn(cwd, &["--listen", "127.0.0.1:0"]);
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the server never blocks on a full pipe.
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut dev = Self {
            child,
            stdout: rx,
            banner: Vec::new(),
        };
        let deadline = Instant::now() + BANNER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match dev.stdout.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with("More tokens:");
                    dev.banner.push(line);
                    if done {
                        return dev;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no banner within {BANNER_TIMEOUT:?}; so far: {:?}",
                        dev.banner
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "sluice dev exited ({:?}) before its banner; it printed: {:?}",
                    dev.child.wait(),
                    dev.banner
                ),
            }
        }
    }

    /// The first banner line starting with `prefix`, without it.
    fn line_after(&self, prefix: &str) -> &str {
        self.banner
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {:?}", self.banner))
    }

    /// The management API's address the banner prints.
    fn management(&self) -> &str {
        let line = self.line_after("management:");
        line.trim()
            .strip_prefix("https://")
            .and_then(|l| l.split_once("/v1/"))
            .map(|(addr, _)| addr)
            .unwrap_or_else(|| panic!("management: https://ADDR/v1/ expected, not {line:?}"))
    }

    /// The client command printed under "Connect".
    fn client_command(&self) -> &str {
        let at = self
            .banner
            .iter()
            .position(|l| l.starts_with("Connect"))
            .unwrap_or_else(|| panic!("no Connect section in {:?}", self.banner));
        self.banner[at + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .expect("a command under Connect")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `child` to completion with `input` on its stdin, killing it after
/// [`COMMAND_TIMEOUT`].
fn finish(mut child: Child, input: &str) -> Output {
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let read_all = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let stdout = read_all(child.stdout.take().map(|p| Box::new(p) as Box<_>));
    let stderr = read_all(child.stderr.take().map(|p| Box::new(p) as Box<_>));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after {COMMAND_TIMEOUT:?}; stdout so far: {:?}",
                stdout
                    .try_recv()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let collect = |rx: Receiver<Vec<u8>>| rx.recv_timeout(COMMAND_TIMEOUT).unwrap_or_default();
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

fn piped(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Verify `pem`'s certificate for 127.0.0.1 with rustls (itself the trust
/// anchor) as if the time were `at`.
fn verify_at(pem: &[u8], at: SystemTime) -> Result<(), rustls::Error> {
    let der = CertificateDer::from_pem_slice(pem).expect("a PEM certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).expect("a usable trust anchor");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .expect("verifier");
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    verifier
        .verify_server_cert(&der, &[], &name, &[], UnixTime::since_unix_epoch(since))
        .map(|_| ())
}

fn expired(result: Result<(), rustls::Error>) -> bool {
    matches!(
        result,
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
        ))
    )
}

#[test]
fn quickstart_the_printed_client_command_gets_the_readme_answers() {
    let (typed, answers) = readme_transcript();
    let cwd = TempDir::new();
    let dev = Dev::start(&cwd.0);

    // The banner comes first: no file listing or build output before it.
    assert!(
        dev.banner[0].starts_with("Sluice dev server on wss://127.0.0.1:"),
        "the first line is not the banner: {:?}",
        dev.banner
    );
    let url = dev.line_after("Sluice dev server on ");
    let command = dev.client_command();
    // The command runs this very binary, not `cargo run` (a second build).
    let program = command.split_whitespace().next().expect("a program");
    assert_eq!(
        Path::new(program)
            .canonicalize()
            .expect("the printed program exists"),
        sluice_tests::sluice_bin()
            .canonicalize()
            .expect("the binary exists"),
        "{command}"
    );
    assert!(command.contains(&format!(" connect {url} --ca dev/cert.pem --token ey")));
    assert!(
        dev.line_after("certificate:")
            .contains("self-signed, valid until")
    );

    let mut shell = Command::new("sh");
    shell.arg("-c").arg(command).current_dir(&cwd.0);
    let input = typed.join("\n") + "\n";
    let out = finish(piped(shell), &input);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client command failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = stdout.lines().map(|l| normalise(l, true)).collect();
    let want: Vec<String> = answers.iter().map(|l| normalise(l, false)).collect();
    assert_eq!(got, want, "the client printed:\n{stdout}");
    drop(dev);
}

/// The README's commands between `quickstart-tenant` markers, for this dev
/// server: its binary, its addresses.
fn readme_tenant_commands(dev: &Dev) -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find("<!-- quickstart-tenant: begin -->")
        .expect("README.md has the quickstart-tenant begin marker");
    let end = readme
        .find("<!-- quickstart-tenant: end -->")
        .expect("README.md has the quickstart-tenant end marker");
    let url = dev.line_after("Sluice dev server on ");
    let listen = url
        .strip_prefix("wss://")
        .and_then(|u| u.strip_suffix("/ws/demo"))
        .expect("wss://ADDR/ws/demo");
    let api = dev.management();
    let bin = sluice_tests::sluice_bin().display().to_string();
    let commands: Vec<String> = readme[start..end]
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("```") && !l.trim().is_empty())
        .map(|l| {
            l.replace("target/release/sluice", &bin)
                .replace("127.0.0.1:9443", api)
                .replace("127.0.0.1:8443", listen)
        })
        .collect();
    assert!(
        commands.iter().any(|c| c.contains("tenant create")),
        "{commands:?}"
    );
    commands
}

/// The tenant of docs/management.md's example (its first JSON block), with
/// this machine's chat handler.
fn docs_example_tenant(chat: &str) -> String {
    let doc =
        std::fs::read_to_string(repo_root().join("docs/management.md")).expect("management.md");
    let start = doc.find("```json\n").expect("a JSON example") + "```json\n".len();
    let end = start + doc[start..].find("```").expect("its end");
    let mut tenant: Value = serde_json::from_str(&doc[start..end]).expect("the example is JSON");
    tenant["handlers"]["chat"]["component"] = Value::from(chat);
    tenant.to_string()
}

/// `sluice <args>` in `cwd`: exit status, stdout, stderr.
fn sluice(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(sluice_tests::sluice_bin());
    cmd.args(args).current_dir(cwd).env_remove("SLUICE_TOKEN");
    let out = finish(piped(cmd), "");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn quickstart_a_second_tenant_is_created_through_the_api_and_chats() {
    let cwd = TempDir::new();
    let dev = Dev::start(&cwd.0);
    let api = dev.management().to_owned();
    let chat = dev.line_after("chat handler:").trim().to_owned();
    // The banner says how, with this server's flags.
    let create = dev.line_after(&format!(
        "{} tenant create acme",
        dev.client_command()
            .split_whitespace()
            .next()
            .expect("program")
    ));
    assert!(
        create.contains(&format!(
            "--url {api} --ca dev/cert.pem --token-file dev/admin.token"
        )),
        "{create}"
    );
    std::fs::write(cwd.0.join("acme.json"), docs_example_tenant(&chat)).expect("acme.json");

    let script = format!("set -e\n{}\n", readme_tenant_commands(&dev).join("\n"));
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(&script)
        .current_dir(&cwd.0)
        .env_remove("SLUICE_TOKEN");
    let typed = "{\"type\":\"chat.join\",\"id\":\"1\",\"channel\":\"room:1\"}\n\
                 {\"type\":\"chat.send\",\"id\":\"2\",\"channel\":\"room:1\",\"data\":{\"text\":\"hi\"}}\n";
    let out = finish(piped(shell), typed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's commands failed ({}):\n{script}\n{stdout}{stderr}",
        out.status
    );
    assert!(
        stdout.contains("tenant acme created: revision "),
        "{stdout}"
    );
    assert!(
        stdout.contains("written: dev/acme.k1.secret (0600)"),
        "{stdout}"
    );
    let secret = std::fs::read_to_string(cwd.0.join("dev/acme.k1.secret")).expect("secret");
    assert!(
        secret.len() >= 32 && !stdout.contains(&secret),
        "the secret went to its file only"
    );
    #[cfg(unix)]
    for file in ["dev/acme.k1.secret", "dev/acme.token"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(cwd.0.join(file))
            .expect(file)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let frames: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "welcome" && f["data"]["subject"] == "alice"),
        "{stdout}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "ack" && f["id"] == "2" && f["data"]["seq"].is_u64()),
        "alice chatted on tenant acme: {stdout}"
    );

    // What the API refuses, as the CLI tells it; each refusal exits 1.
    let flags = [
        "--url",
        api.as_str(),
        "--ca",
        "dev/cert.pem",
        "--token-file",
        "dev/admin.token",
    ];
    let with = |args: &[&str]| sluice(&cwd.0, &[args, &flags[..]].concat());
    let (ok, _, err) = with(&["tenant", "create", "acme", "--file", "acme.json"]);
    assert!(!ok && err.contains("error (409): exists: "), "{err}");
    let (ok, out, err) = with(&["tenant", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("demo api revision "))
            && out.lines().any(|l| l.starts_with("acme api revision ")),
        "{out}"
    );
    let (ok, out, err) = with(&[
        "tenant",
        "update",
        "acme",
        "--set",
        r#"origins=["https://web.acme.example"]"#,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("tenant acme is at revision ")
            && out.contains("tenant acme updated: revision "),
        "{out}{err}"
    );
    let (ok, _, err) = with(&[
        "tenant",
        "update",
        "acme",
        "--revision",
        "1",
        "--set",
        "require_origin=true",
    ]);
    assert!(
        !ok && err.contains("error (409): conflict: ") && err.contains("retry with --revision "),
        "{err}"
    );
    std::fs::write(
        cwd.0.join("bad.json"),
        r#"{"auth": {"issuer": "i", "audience": "a", "keys": [{"kid": "k", "algorithm": "none"}]},
            "routes": {"x": {"handler": "nowhere"}}}"#,
    )
    .expect("bad.json");
    let (ok, _, err) = with(&["tenant", "create", "bad", "--file", "bad.json"]);
    assert!(!ok && err.starts_with("error (422): invalid: "), "{err}");
    assert!(
        err.lines()
            .filter(|l| l.starts_with("  tenants.bad"))
            .count()
            >= 3
            && err.contains("  tenants.bad.routes.x: "),
        "every problem, one per line: {err}"
    );
    // The tenant's own token reads it; the operator's list is not its own.
    let (ok, out, err) = sluice(
        &cwd.0,
        &[
            "tenant",
            "show",
            "acme",
            "--url",
            &api,
            "--ca",
            "dev/cert.pem",
            "--token-file",
            "dev/acme.token",
        ],
    );
    assert!(
        ok && out.starts_with("tenant acme (api, revision "),
        "{out}{err}"
    );
    assert!(out.contains("(hidden)") && !out.contains(&secret), "{out}");
    let (ok, _, err) = sluice(
        &cwd.0,
        &[
            "tenant",
            "list",
            "--url",
            &api,
            "--ca",
            "dev/cert.pem",
            "--token-file",
            "dev/acme.token",
        ],
    );
    assert!(!ok && err.starts_with("error (403)"), "{err}");
    // The client refuses plain HTTP before anything is sent.
    let (ok, _, err) = sluice(
        &cwd.0,
        &[
            "tenant",
            "list",
            "--url",
            &format!("http://{api}"),
            "--ca",
            "dev/cert.pem",
            "--token-file",
            "dev/admin.token",
        ],
    );
    assert!(!ok && err.contains("HTTPS only"), "{err}");
    drop(dev);

    // A restart keeps the demo tenant of the store and its secret file:
    // the printed client command connects.
    let dev = Dev::start(&cwd.0);
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(dev.client_command())
        .current_dir(&cwd.0);
    let out = finish(
        piped(shell),
        "{\"type\":\"echo\",\"id\":\"e\",\"data\":1}\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(r#"{"type":"ack","id":"e","data":1}"#),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api = dev.management().to_owned();
    let (ok, out, err) = sluice(
        &cwd.0,
        &[
            "tenant",
            "list",
            "--url",
            &api,
            "--ca",
            "dev/cert.pem",
            "--token-file",
            "dev/admin.token",
        ],
    );
    assert!(
        ok && out.contains("acme api") && out.contains("demo api"),
        "{out}{err}"
    );
}

#[test]
fn dev_on_a_busy_port_says_to_pick_another_with_listen() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr");
    let cwd = TempDir::new();
    let mut cmd = Command::new(sluice_tests::sluice_bin());
    cmd.args(["dev", "--listen", &addr.to_string()])
        .current_dir(&cwd.0);
    let started = Instant::now();
    let out = finish(piped(cmd), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sluice dev started on a busy port");
    let next = format!("127.0.0.1:{}", addr.port() + 1);
    assert!(
        stderr.contains(&format!("{addr} is already in use"))
            && stderr.contains(&format!("--listen {next}")),
        "{stderr}"
    );
    // Said before any work: no handler build, nothing written.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!cwd.0.join("dev").exists());
}

#[test]
fn the_dev_certificate_is_valid_for_90_days_and_renewed_before_it_expires() {
    let dir = TempDir::new();
    let now = SystemTime::now();
    let cert_path = dir.0.join("cert.pem");
    let write = || {
        sluice::dev_files::write_cert(&dir.0, false).expect("write_cert");
        std::fs::read(&cert_path).expect("cert.pem")
    };
    let put = |from: SystemTime, until: SystemTime| {
        let (cert, key) =
            sluice::dev_files::self_signed_valid(&["localhost", "127.0.0.1"], from, until)
                .expect("cert");
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(dir.0.join("key.pem"), key).expect("write key");
        std::fs::read(&cert_path).expect("cert.pem")
    };

    // A new one: valid now and for 89 days, expired at 91.
    let fresh = write();
    verify_at(&fresh, now).expect("valid now");
    verify_at(&fresh, now + DAY * 89).expect("valid in 89 days");
    assert!(expired(verify_at(&fresh, now + DAY * 91)));
    // Kept while it has time left.
    assert_eq!(write(), fresh);

    // Expired, or with hours left: replaced by one valid now.
    for until in [now - DAY, now + DAY / 2] {
        let old = put(now - DAY * 80, until);
        let renewed = write();
        assert_ne!(renewed, old);
        verify_at(&renewed, now + DAY * 30).expect("the renewed one is valid");
    }
    // 30 days left: kept.
    let midlife = put(now - DAY * 60, now + DAY * 30);
    assert_eq!(write(), midlife);
    // One from an older version, 1975 to 4096: replaced.
    let (cert, key) =
        sluice::server::tls::self_signed(&["localhost", "127.0.0.1"]).expect("old-style cert");
    std::fs::write(&cert_path, &cert).expect("write");
    std::fs::write(dir.0.join("key.pem"), key).expect("write");
    let renewed = write();
    assert_ne!(renewed, cert.into_bytes());
    assert!(expired(verify_at(&renewed, now + DAY * 91)));
}

#[tokio::test]
async fn dev_replaces_an_expired_certificate_at_start() {
    let cwd = TempDir::new();
    let dev_dir = cwd.0.join("dev");
    std::fs::create_dir_all(&dev_dir).expect("mkdir");
    let now = SystemTime::now();
    let (cert, key) = sluice::dev_files::self_signed_valid(
        &["localhost", "127.0.0.1"],
        now - DAY * 100,
        now - DAY,
    )
    .expect("cert");
    std::fs::write(dev_dir.join("cert.pem"), &cert).expect("write");
    std::fs::write(dev_dir.join("key.pem"), key).expect("write");

    let dev = tokio::task::spawn_blocking({
        let cwd = cwd.0.clone();
        move || Dev::start(&cwd)
    })
    .await
    .expect("start");
    let ca_pem = std::fs::read(dev_dir.join("cert.pem")).expect("cert.pem");
    assert_ne!(ca_pem, cert.as_bytes(), "the expired certificate was kept");
    verify_at(&ca_pem, now).expect("the new certificate is valid now");
    // And the server serves it: a client trusting the new file connects.
    let url = dev.line_after("Sluice dev server on ").to_owned();
    let token = dev
        .banner
        .iter()
        .find(|l| l.starts_with("eyJ"))
        .expect("the printed token")
        .clone();
    let opts = ClientOptions {
        ca_pem,
        token: Some(token),
        ..Default::default()
    };
    let socket = sluice::client::connect(&url, &opts).await;
    assert!(socket.is_ok(), "{:?}", socket.err());
    drop(dev);
}

#[tokio::test]
async fn connect_without_ca_refuses_a_self_signed_server_and_names_ca() {
    let server = TestServer::start().await;
    let url = server.url("alpha");
    let token = server.token("alpha", "alice", "chat:write");
    let ca = TempDir::new();
    let ca_file = ca.0.join("cert.pem");
    std::fs::write(&ca_file, &server.ca_pem).expect("write ca");

    let run = |ca: Option<PathBuf>| {
        let (url, token) = (url.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(sluice_tests::sluice_bin());
            cmd.args(["connect", &url, "--token", &token]);
            if let Some(ca) = ca {
                cmd.arg("--ca").arg(ca);
            }
            finish(piped(cmd), "{\"type\":\"ping\",\"id\":\"p\"}\n")
        })
    };

    let out = run(None).await.expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "connected without --ca");
    assert!(
        stderr.contains("invalid peer certificate") && stderr.contains("--ca"),
        "{stderr}"
    );

    // The same command trusting the server's certificate is answered.
    let out = run(Some(ca_file)).await.expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#"{"type":"pong","id":"p"}"#), "{stdout}");
}
