//! Sluice shipped the way an operator runs it (docs/deploy.md): the OCI
//! image (`Containerfile`), the systemd unit (`deploy/systemd`) and the
//! fleet (`deploy/kubernetes`, and the same topology for `podman kube play`
//! in `deploy/podman`).
//!
//! - `unit_*`: `systemd-analyze security --offline=true` scores the unit
//!   "OK" (exposure at most 2.0) and `systemd-analyze verify` finds nothing;
//!   a unit without its hardening and one with a typo are caught.
//! - `manifests_*`: `kubernetes-validate --strict` (its schemas ship in the
//!   PyPI package) accepts every manifest for Kubernetes 1.30 and 1.37, and
//!   `tests/deploy/check-manifests` finds the pieces consistent (probes,
//!   disruption budgets, grace period against the drain, Secrets, the
//!   management API's port, one config per node, podman's file against
//!   Kubernetes'); a
//!   planted mistake of each kind is caught.
//! - `image_*`: builds the image with podman, runs it with a config volume
//!   and a data volume, chats through it with `sluice connect`, rotates the
//!   tenant's key with SIGHUP, stops it (SIGTERM) and sees every client
//!   closed with 1001 before the container exits 0; the data survives into
//!   the next container.
//! - `fleet_*`: `podman kube play` of deploy/podman/sluice-fleet.yaml: three
//!   NATS servers, two Sluice nodes; the chat handler is pushed over HTTPS
//!   through one node's management API (its own listener, the wss
//!   certificate) and serves on both, two clients chat across the nodes, a drained node closes its
//!   client with 1001 and the client resumes on the other node.
//!
//! The image is built with the prebuilt-binary path of the Containerfile
//! (`SLUICE_BINARY_FROM`, the `sluice` binary this build made, stripped of
//! debug info) on a runtime base the test makes from that binary's shared
//! libraries: no registry is reachable here, and compiling Sluice again in
//! a container would take 15+ minutes. The NATS image the manifests name
//! is stood in for by a local image of the pinned nats-server (the official
//! image is that binary alone).
//!
//! On these machines podman needs `--runtime runc` (crun cannot set the
//! rlimits here) and explicit `--ulimit nofile=…,nproc=…` within the
//! machine's hard limits: the tests pass them (for `kube play`, through a
//! `containers.conf` of their own); the product does not depend on them.
//! Needs scripts/install-deploy-tools (tests/run runs it); when it found
//! that podman cannot run a container here it sets `SLUICE_PODMAN_SKIP`,
//! and the image and fleet tests say so and skip.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use sluice_tests::handlers;
use sluice_tests::server::TempDir;

/// The image the manifests name; the tests build it under this name.
const SLUICE_IMAGE: &str = "registry.example.com/sluice:0.1.0";
/// Stand-ins for the public images the manifests name.
const NATS_IMAGE: &str = "docker.io/library/nats:2.15.1";
/// Local bases of the test's build (never pushed anywhere).
const RUNTIME_BASE: &str = "localhost/sluice-test-runtime-base:latest";
const BINARY_IMAGE: &str = "localhost/sluice-test-binary:latest";
/// Every podman step is bounded.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);
/// Readiness of a node, a message's answer, a close.
const WAIT: Duration = Duration::from_secs(60);
/// The user the image runs as (distroless' `nonroot`).
const IMAGE_UID: u32 = 65532;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository's root")
}

/// A tool installed by scripts/install-deploy-tools, from its variable or
/// where the script puts it.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deploy-tools (tests/run does)",
        path.display()
    );
    path
}

fn kubernetes_validate() -> PathBuf {
    tool(
        "SLUICE_KUBERNETES_VALIDATE",
        "/var/tmp/sluice-tools/k8s-venv/bin/kubernetes-validate",
    )
}

/// Run `cmd` to its end, at most `limit`: its output.
fn run_for(cmd: &mut Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let readers = [
        drain_pipe(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
        drain_pipe(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
    ];
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [stdout, stderr] = readers.map(|r| r.join().expect("pipe reader"));
    Output {
        status,
        stdout,
        stderr,
    }
}

fn drain_pipe(pipe: Option<Box<dyn std::io::Read + Send>>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Run `cmd`; panic with its output unless it succeeds; its stdout.
fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run_for(cmd, PODMAN_TIMEOUT);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------- the unit

/// A root for `systemd-analyze verify --root`: the unit, the commands it
/// runs (sluice: this build's binary) and the units it orders itself after.
fn unit_root(unit_text: &str) -> TempDir {
    let root = TempDir::new();
    let r = &root.0;
    for dir in [
        "usr/local/bin",
        "usr/bin",
        "etc/systemd/system",
        "usr/lib/systemd",
    ] {
        std::fs::create_dir_all(r.join(dir)).expect("mkdir");
    }
    // The binary itself (a link, or a copy across file systems).
    let sluice = r.join("usr/local/bin/sluice");
    if std::fs::hard_link(sluice_tests::sluice_bin(), &sluice).is_err() {
        std::fs::copy(sluice_tests::sluice_bin(), &sluice).expect("copy sluice");
    }
    std::fs::copy("/bin/kill", r.join("usr/bin/kill")).expect("copy kill");
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).expect("symlink bin");
    std::os::unix::fs::symlink("usr/lib", r.join("lib")).expect("symlink lib");
    ok(Command::new("cp")
        .args(["-a", "/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/")));
    std::fs::write(r.join("etc/systemd/system/sluice.service"), unit_text).expect("write unit");
    root
}

/// `systemd-analyze verify`: what it says (nothing when the unit is sound).
fn verify_unit(unit_text: &str) -> String {
    let root = unit_root(unit_text);
    let out = run_for(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.0.display()))
            .arg("sluice.service"),
        PODMAN_TIMEOUT,
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `systemd-analyze security --offline=true`: the overall exposure and its
/// verdict ("OK", "MEDIUM", ...).
fn unit_exposure(unit_text: &str) -> (f64, String) {
    let dir = TempDir::new();
    let unit = dir.0.join("sluice.service");
    std::fs::write(&unit, unit_text).expect("write unit");
    let out = run_for(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
        PODMAN_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for sluice.service"))
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let rest = line.rsplit(':').next().expect("a score").trim();
    let mut words = rest.split_whitespace();
    let score = words.next().expect("a score").parse().expect("a number");
    (score, words.next().unwrap_or_default().to_owned())
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_root().join("deploy/systemd/sluice.service")).expect("the unit")
}

#[test]
fn unit_is_hardened_to_ok_and_verifies() {
    let unit = unit_text();
    let (score, verdict) = unit_exposure(&unit);
    assert!(
        score <= 2.0 && verdict == "OK",
        "systemd-analyze security: {score} {verdict}, want OK (<= 2.0)"
    );
    let said = verify_unit(&unit);
    assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    // What the issue asks of it, as written.
    for line in [
        "ProtectSystem=strict",
        "StateDirectory=sluice",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=1048576",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "User=sluice",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }
    // The stop timeout leaves the default drain its time.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .expect("seconds");
    assert!(
        stop * 1000 > sluice::config::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64 + 5000,
        "TimeoutStopSec={stop} does not cover the drain"
    );
}

#[test]
fn unit_checks_catch_a_weak_or_broken_unit() {
    let unit = unit_text();
    // Without its sandboxing the same service is exposed.
    let weak: String = unit
        .lines()
        .filter(|l| {
            !l.starts_with("Protect")
                && !l.starts_with("Private")
                && !l.starts_with("Restrict")
                && !l.starts_with("SystemCall")
                && !l.starts_with("CapabilityBoundingSet")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let (score, verdict) = unit_exposure(&weak);
    assert!(
        score > 2.0 && verdict != "OK",
        "a unit without sandboxing scored {score} {verdict}"
    );
    // A typo is reported.
    let typo = unit.replace("Type=exec", "Type=exek");
    let said = verify_unit(&typo);
    assert!(said.contains("exek"), "verify missed a bad Type=: {said:?}");
    let missing = unit.replace(
        "/usr/local/bin/sluice serve",
        "/usr/local/bin/sluicex serve",
    );
    let said = verify_unit(&missing);
    assert!(
        said.contains("sluicex"),
        "verify missed a missing binary: {said:?}"
    );
}

// ----------------------------------------------------------- the manifests

fn manifest_files() -> Vec<PathBuf> {
    let root = repo_root();
    [
        "deploy/kubernetes/nats.yaml",
        "deploy/kubernetes/sluice.yaml",
        "deploy/kubernetes/secrets.example.yaml",
        "deploy/podman/sluice-fleet.yaml",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect()
}

fn validate(files: &[PathBuf], version: &str) -> Output {
    run_for(
        Command::new(kubernetes_validate())
            .args(["--strict", "--quiet", "-k", version])
            .args(files),
        PODMAN_TIMEOUT,
    )
}

/// The pinned nats-server (scripts/install-nats-server; tests/run sets
/// `SLUICE_NATS_SERVER`).
fn nats_server() -> PathBuf {
    tool(
        "SLUICE_NATS_SERVER",
        "/var/tmp/sluice-tools/bin/nats-server",
    )
}

/// tests/deploy/check-manifests on the tree at `root`, with nats-server
/// checking the NATS configs.
fn check_manifests(root: &Path) -> Output {
    let python = kubernetes_validate().with_file_name("python3");
    run_for(
        Command::new(python)
            .arg(repo_root().join("tests/deploy/check-manifests"))
            .arg(root)
            .arg(nats_server()),
        PODMAN_TIMEOUT,
    )
}

#[test]
fn manifests_validate_and_agree() {
    let files = manifest_files();
    for version in ["1.30.0", "1.37.0"] {
        let out = validate(&files, version);
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = check_manifests(&repo_root());
    assert!(
        out.status.success(),
        "check-manifests:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of deploy/ with `edit` applied to one file.
fn planted(file: &str, from: &str, to: &str) -> TempDir {
    let dir = TempDir::new();
    ok(Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("deploy"))
        .arg(&dir.0));
    let path = dir.0.join("deploy").join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains(from),
        "{file} has no {from:?} to plant a mistake in"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    dir
}

#[test]
fn manifest_checks_catch_planted_mistakes() {
    // A field Kubernetes does not know.
    let typo = planted(
        "kubernetes/sluice.yaml",
        "terminationGracePeriodSeconds: 40",
        "terminationGracePeriodSecond: 40",
    );
    let out = validate(&[typo.0.join("deploy/kubernetes/sluice.yaml")], "1.37.0");
    assert!(
        !out.status.success(),
        "kubernetes-validate accepted an unknown field"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("terminationGracePeriodSecond"));
    for (file, from, to, said) in [
        // A grace period shorter than preStop + the drain.
        (
            "kubernetes/sluice.yaml",
            "terminationGracePeriodSeconds: 40",
            "terminationGracePeriodSeconds: 15",
            "must cover preStop",
        ),
        // Readiness on /healthz instead of /readyz.
        (
            "kubernetes/sluice.yaml",
            r#"["/usr/local/bin/sluice", "health", "--admin", "127.0.0.1:9464"]"#,
            r#"["/usr/local/bin/sluice", "health", "--live", "--admin", "127.0.0.1:9464"]"#,
            "readiness probe must be",
        ),
        // One node's config drifting from the others.
        (
            "kubernetes/sluice.yaml",
            "drain_timeout_ms = 20000",
            "drain_timeout_ms = 25000",
            "in more than `node`",
        ),
        // The admin listener (plain HTTP) on the pod's network.
        (
            "kubernetes/sluice.yaml",
            r#"admin_listen = "127.0.0.1:9464""#,
            r#"admin_listen = "0.0.0.0:9464""#,
            "must stay on the pod's loopback",
        ),
        // The management API where its container port is not.
        (
            "kubernetes/sluice.yaml",
            "{name: management, containerPort: 9443}",
            "{name: management, containerPort: 9543}",
            "container's `management` port",
        ),
        // Two nodes of the podman pod on one management port.
        (
            "podman/sluice-fleet.yaml",
            r#"listen = "0.0.0.0:9444""#,
            r#"listen = "0.0.0.0:9443""#,
            "listen on one port",
        ),
        // A secret key nobody provides.
        (
            "kubernetes/sluice.yaml",
            "/etc/sluice/secrets/nats.token",
            "/etc/sluice/secrets/nats-token",
            "has no key nats-token",
        ),
        // A NATS setting nats-server refuses.
        (
            "kubernetes/nats.yaml",
            "lame_duck_duration: 30s",
            "lame_duck_duration: 20s",
            "nats-server -t refuses it",
        ),
        // No disruption budget for NATS.
        (
            "kubernetes/nats.yaml",
            "kind: PodDisruptionBudget",
            "kind: PodDisruptionBudgetX",
            "needs one PodDisruptionBudget",
        ),
        // The podman topology drifting from Kubernetes'.
        (
            "podman/sluice-fleet.yaml",
            "replicas = 3",
            "replicas = 1",
            "differs from deploy/kubernetes's",
        ),
    ] {
        let dir = planted(file, from, to);
        let out = check_manifests(&dir.0);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && text.contains(said),
            "check-manifests missed {to:?} in {file}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ------------------------------------------------------------------ podman

/// The reason podman cannot run here, from scripts/install-deploy-tools.
fn podman_skipped(test: &str) -> bool {
    match std::env::var("SLUICE_PODMAN_SKIP") {
        Ok(reason) => {
            eprintln!("SKIPPED {test}: podman cannot run a container here: {reason}");
            true
        }
        Err(_) => false,
    }
}

/// One podman test at a time on this machine: they use fixed names (the
/// manifests' images, Secrets and pod), as an operator's would be.
fn podman_lock() -> File {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("sluice-deploy-tests.lock"))
        .expect("the lock file");
    file.lock().expect("lock");
    file
}

/// (soft = hard) limits within this process's hard limits: what the
/// containers get.
fn ulimits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let hard = |name: &str, cap: u64| -> u64 {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().nth(1).map(str::to_owned))
            .map_or(cap, |v| v.parse().unwrap_or(cap).min(cap))
    };
    // nproc counts every process and thread of the containers' user on the
    // host; podman's runc refuses values above 32768 here.
    (
        hard("Max open files", 1 << 20),
        hard("Max processes", 1 << 14),
    )
}

/// The containers.conf every podman call here reads: runc, and the limits
/// (`kube play` has no --ulimit).
fn containers_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let (nofile, nproc) = ulimits();
        let path = std::env::temp_dir().join(format!("sluice-deploy-{}.conf", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\nruntime = \"runc\"\n"
            ),
        )
        .expect("write containers.conf");
        path
    })
}

fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", containers_conf());
    cmd
}

/// `podman run` as the tests must run it on these machines.
fn podman_run() -> Command {
    let (nofile, nproc) = ulimits();
    let mut cmd = podman();
    cmd.args(["run", "--runtime", "runc"])
        .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
        .arg(format!("--ulimit=nproc={nproc}:{nproc}"));
    cmd
}

/// An image holding `files` (host path, path in the image) and, when
/// `libraries_of` names binaries, every shared library they load (`ldd`)
/// with /etc/passwd (root, and nonroot: 65532), /tmp and /var/lib: a base
/// like distroless/cc, made here from the host's files. Needs root (the
/// files' owners go into the image as they are).
fn rootfs_image(name: &str, files: &[(&Path, &str)], libraries_of: &[&Path]) {
    let dir = TempDir::new();
    let rootfs = dir.0.join("rootfs");
    let mut copies: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(host, inside)| (host.to_path_buf(), (*inside).to_owned()))
        .collect();
    for binary in libraries_of {
        for line in ok(Command::new("ldd").arg(binary)).lines() {
            assert!(!line.contains("not found"), "{}: {line}", binary.display());
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line
                .split("=>")
                .last()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_default();
            if path.starts_with('/') {
                copies.push((PathBuf::from(path), path.to_owned()));
            }
        }
    }
    if !libraries_of.is_empty() {
        for d in ["etc", "tmp", "var/lib", "home/nonroot"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
        )
        .expect("passwd");
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n").expect("group");
        std::fs::set_permissions(
            rootfs.join("tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .expect("chmod /tmp");
        std::os::unix::fs::chown(
            rootfs.join("home/nonroot"),
            Some(IMAGE_UID),
            Some(IMAGE_UID),
        )
        .expect("chown /home/nonroot (the podman tests run as root)");
    }
    for (from, to) in copies {
        let to = rootfs.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("a folder")).expect("mkdir");
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    let tar = dir.0.join("rootfs.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg("."));
    let _ = run_for(podman().args(["rmi", "-f", name]), PODMAN_TIMEOUT);
    ok(podman()
        .args([
            "import",
            "--change",
            "LABEL org.opencontainers.image.description=made by tests/all/deploy.rs",
        ])
        .arg(&tar)
        .arg(name));
}

/// What the test built, and how big the image is.
struct Images {
    sluice_bytes: u64,
    binary_bytes: u64,
}

/// Build the Sluice image from the Containerfile (prebuilt-binary path, on
/// a base made from the binary's libraries) and, with `fleet`, the NATS
/// stand-in.
fn build_images(fleet: bool) -> Images {
    let work = TempDir::new();
    // This build's binary, without its debug info (the release profile's
    // binary is what the default path builds; see docs/deploy.md).
    let binary = work.0.join("sluice");
    ok(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&binary)
        .arg(sluice_tests::sluice_bin()));
    // The runtime base: the libraries the binary loads, not the binary.
    rootfs_image(RUNTIME_BASE, &[], &[&binary]);
    // What the Containerfile's `binary` stage takes instead of building.
    rootfs_image(BINARY_IMAGE, &[(&binary, "/usr/local/bin/sluice")], &[]);
    let _ = run_for(podman().args(["rmi", "-f", SLUICE_IMAGE]), PODMAN_TIMEOUT);
    ok(podman()
        .args(["build", "--pull=never", "--format", "docker", "-f"])
        .arg(repo_root().join("Containerfile"))
        .arg(format!("--build-arg=RUNTIME_IMAGE={RUNTIME_BASE}"))
        .arg(format!("--build-arg=SLUICE_BINARY_FROM={BINARY_IMAGE}"))
        .args(["-t", SLUICE_IMAGE])
        .arg(repo_root()));
    let size = |image: &str| -> u64 {
        ok(podman().args(["image", "inspect", "--format", "{{.Size}}", image]))
            .trim()
            .parse()
            .expect("a size")
    };
    if fleet {
        let nats = nats_server()
            .canonicalize()
            .expect("the pinned nats-server");
        // The official image: the static binary alone, as its entry point.
        let dir = TempDir::new();
        std::fs::copy(&nats, dir.0.join("nats-server")).expect("copy nats-server");
        std::fs::write(
            dir.0.join("Containerfile"),
            "FROM scratch\nCOPY nats-server /nats-server\nENTRYPOINT [\"/nats-server\"]\n",
        )
        .expect("write");
        let _ = run_for(podman().args(["rmi", "-f", NATS_IMAGE]), PODMAN_TIMEOUT);
        ok(podman()
            .args(["build", "--pull=never", "-t", NATS_IMAGE])
            .arg(&dir.0));
    }
    let binary_bytes = std::fs::metadata(&binary).expect("binary").len();
    Images {
        sluice_bytes: size(SLUICE_IMAGE),
        binary_bytes,
    }
}

/// A `sluice connect` process: lines in, frames out.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Client {
    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice connect");
        let (tx, lines) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send((Instant::now(), line));
                }
            });
        }
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to sluice connect");
        stdin.flush().expect("flush");
    }

    /// The first line (from now on) that contains every one of `parts`, and
    /// when it arrived.
    fn expect(&mut self, parts: &[&str]) -> (Instant, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    if parts.iter().all(|p| line.contains(p)) {
                        return (at, line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "no line with {parts:?} within {} s; the client printed:\n{}",
                    WAIT.as_secs(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The client's exit status once it ends by itself.
    fn wait(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "sluice connect did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the containers, pods, volumes and Secrets a test made, however
/// it ends.
#[derive(Default)]
struct Cleanup(Mutex<Vec<Vec<String>>>);

impl Cleanup {
    fn add(&self, args: &[&str]) {
        self.0
            .lock()
            .expect("cleanup list")
            .push(args.iter().map(|a| (*a).to_owned()).collect());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for args in list.into_iter().rev() {
            let _ = run_for(podman().args(&args), PODMAN_TIMEOUT);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `n` random bytes as hex (tokens, HMAC keys).
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    std::io::Read::read_exact(&mut File::open("/dev/urandom").expect("urandom"), &mut buf)
        .expect("read");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image test's config: one node, the chat handler, tenant `demo`
/// with the HMAC keys named (the first one signs `sluice token`).
fn image_config(wss: u16, admin: u16, management: u16, keys: &[&str]) -> String {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:{wss}"
tls_cert = "cert.pem"
tls_key = "key.pem"
admin_listen = "127.0.0.1:{admin}"
admin_token = {{ secret_file = "admin.token" }}

[management]
listen = "127.0.0.1:{management}"

[store]
data_dir = "/var/lib/sluice"

[tenants.demo.auth]
issuer = "sluice-image-test"
audience = "sluice"
"#
    );
    for kid in keys {
        text.push_str(&format!(
            "\n[[tenants.demo.auth.keys]]\nkid = \"{kid}\"\nalgorithm = \"HS256\"\nsecret_file = \"{kid}.key\"\n"
        ));
    }
    text.push_str(
        r#"
[tenants.demo.handlers.chat]
component = "chat.wasm"
grants = ["state", "clock"]

[tenants.demo.routes."chat.join"]
handler = "chat"
channel = "subscribe"

[tenants.demo.routes."chat.send"]
handler = "chat"
channel = "publish"
scopes = ["chat:write"]

[[tenants.demo.channels]]
pattern = "room:{id}"
publish_scopes = ["chat:write"]
"#,
    );
    text
}

fn sluice_token(config: &Path, sub: &str) -> String {
    ok(Command::new(sluice_tests::sluice_bin())
        .args(["token", "-c"])
        .arg(config)
        .args(["--tenant", "demo", "--sub", sub, "--scope", "chat:write"]))
    .trim()
    .to_owned()
}

/// `podman inspect` of one field.
fn inspect(what: &str, format: &str) -> String {
    ok(podman().args(["inspect", "--format", format, what]))
        .trim()
        .to_owned()
}

/// Poll the image's own HEALTHCHECK (`sluice health`) until it says healthy.
fn wait_healthy(container: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run_for(
            podman().args(["healthcheck", "run", container]),
            PODMAN_TIMEOUT,
        );
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{container} not healthy within {} s: {}{}\nlogs:\n{}",
            WAIT.as_secs(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(
                &run_for(podman().args(["logs", container]), PODMAN_TIMEOUT).stderr
            )
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn image_serves_reloads_and_drains() {
    if podman_skipped("image_serves_reloads_and_drains") {
        return;
    }
    let _lock = podman_lock();
    let started = Instant::now();
    let images = build_images(false);
    let built = started.elapsed();
    eprintln!(
        "image {SLUICE_IMAGE}: {:.1} MB (binary {:.1} MB, a debug build without debug info; \
         see docs/deploy.md), built in {:.1} s",
        images.sluice_bytes as f64 / 1e6,
        images.binary_bytes as f64 / 1e6,
        built.as_secs_f64()
    );
    // The runtime base adds only the C runtime to the binary.
    assert!(
        images.sluice_bytes < images.binary_bytes + 20_000_000,
        "the image ({} bytes) is much larger than its binary ({} bytes)",
        images.sluice_bytes,
        images.binary_bytes
    );

    // The image as built: non-root, no shell, its ports, volumes, health
    // check and stop signal.
    let config: Value = serde_json::from_str(&ok(podman().args([
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        SLUICE_IMAGE,
    ])))
    .expect("image config");
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(config["StopSignal"], "SIGTERM", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/sluice"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["serve", "-c", "/etc/sluice/sluice.toml"])
    );
    for port in ["8443/tcp", "9464/tcp", "9443/tcp"] {
        assert!(
            config["ExposedPorts"].get(port).is_some(),
            "{port} not exposed: {config}"
        );
    }
    for volume in ["/etc/sluice", "/var/lib/sluice"] {
        assert!(
            config["Volumes"].get(volume).is_some(),
            "{volume} not a volume: {config}"
        );
    }
    let health = inspect(SLUICE_IMAGE, "{{json .HealthCheck}}");
    assert!(
        health.contains(r#""CMD","/usr/local/bin/sluice","health""#),
        "health check: {health}"
    );
    let shell = run_for(
        podman_run().args([
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            SLUICE_IMAGE,
            "-c",
            "true",
        ]),
        PODMAN_TIMEOUT,
    );
    assert!(!shell.status.success(), "the image has a shell");

    // The operator's config folder: certificate, keys, token, handler,
    // readable by the image's user.
    let conf = TempDir::new();
    let dir = &conf.0;
    ok(Command::new(sluice_tests::sluice_bin())
        .args(["cert", "--out"])
        .arg(dir));
    std::fs::write(dir.join("k1.key"), random_hex(32)).expect("k1");
    std::fs::write(dir.join("admin.token"), random_hex(24)).expect("admin token");
    std::fs::copy(handlers::CHAT, dir.join("chat.wasm")).expect("chat.wasm");
    let (wss, admin, management) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("sluice.toml"),
        image_config(wss, admin, management, &["k1"]),
    )
    .expect("config");
    for entry in std::fs::read_dir(dir).expect("conf").flatten() {
        std::os::unix::fs::chown(entry.path(), Some(IMAGE_UID), Some(IMAGE_UID)).expect("chown");
    }

    let name = format!("sluice-image-test-{}", std::process::id());
    let volume = format!("{name}-data");
    let cleanup = Cleanup::default();
    cleanup.add(&["volume", "rm", "-f", &volume]);
    ok(podman().args(["volume", "create", &volume]));
    let start = |name: &str| {
        cleanup.add(&["rm", "-f", "-v", "-t", "0", name]);
        ok(podman_run()
            .args([
                "-d",
                "--name",
                name,
                "--network",
                "host",
                "--stop-timeout",
                "30",
            ])
            .arg(format!("--volume={}:/etc/sluice:ro", dir.display()))
            .arg(format!("--volume={volume}:/var/lib/sluice"))
            .arg(SLUICE_IMAGE));
        wait_healthy(name);
    };
    start(&name);

    // It runs as nonroot, with the file limit it was given.
    let pid = inspect(&name, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65532")),
        "{status}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let (nofile, _) = ulimits();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().nth(3) == Some(&*nofile.to_string())),
        "{limits}"
    );

    // Two clients chat through the container.
    let url = format!("wss://127.0.0.1:{wss}/ws/demo");
    let connect = |token: &str| {
        let mut cmd = Command::new(sluice_tests::sluice_bin());
        cmd.args(["connect", &url, "--ca"])
            .arg(dir.join("cert.pem"))
            .args(["--token", token]);
        cmd
    };
    let config_path = dir.join("sluice.toml");
    let mut alice = Client::start(&mut connect(&sluice_token(&config_path, "alice")));
    let mut bob = Client::start(&mut connect(&sluice_token(&config_path, "bob")));
    for c in [&mut alice, &mut bob] {
        c.expect(&[r#""type":"welcome""#]);
        c.send(r#"{"type":"chat.join","id":"j","channel":"room:1"}"#);
        c.expect(&[r#""type":"ack""#, r#""id":"j""#]);
    }
    alice.send(r#"{"type":"chat.send","id":"s1","channel":"room:1","data":{"text":"hello from the container"}}"#);
    alice.expect(&[r#""type":"ack""#, r#""id":"s1""#]);
    bob.expect(&[r#""type":"event""#, "hello from the container"]);

    // Key rotation without a restart: a token signed with a new key is
    // refused until the config names the key and SIGHUP reloads it; the
    // open connections carry on.
    let next = TempDir::new();
    std::fs::write(next.0.join("k2.key"), random_hex(32)).expect("k2");
    std::fs::copy(next.0.join("k2.key"), dir.join("k2.key")).expect("k2");
    std::os::unix::fs::chown(dir.join("k2.key"), Some(IMAGE_UID), Some(IMAGE_UID)).expect("chown");
    std::fs::write(
        next.0.join("sluice.toml"),
        image_config(wss, admin, management, &["k2"]),
    )
    .expect("config");
    let carol_token = sluice_token(&next.0.join("sluice.toml"), "carol");
    let refused = Client::start(&mut connect(&carol_token));
    assert!(
        !refused.wait().success(),
        "a token of an unknown key was accepted"
    );
    std::fs::write(
        &config_path,
        image_config(wss, admin, management, &["k2", "k1"]),
    )
    .expect("config");
    ok(podman().args(["kill", "--signal", "HUP", &name]));
    let deadline = Instant::now() + WAIT;
    let mut carol = loop {
        let mut c = Client::start(&mut connect(&carol_token));
        let (_, line) = c.expect(&["type"]);
        if line.contains(r#""type":"welcome""#) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the new key was not picked up by SIGHUP: {line}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    carol.send(r#"{"type":"chat.join","id":"j","channel":"room:1"}"#);
    carol.expect(&[r#""type":"ack""#, r#""id":"j""#, "hello from the container"]);
    alice.send(
        r#"{"type":"chat.send","id":"s2","channel":"room:1","data":{"text":"after the reload"}}"#,
    );
    alice.expect(&[r#""type":"ack""#, r#""id":"s2""#]);
    bob.expect(&["after the reload"]);

    // `podman stop` sends SIGTERM: every client is closed with 1001, then
    // the container exits 0, well within its stop timeout.
    let stopping = Instant::now();
    let stopper = {
        let name = name.clone();
        std::thread::spawn(move || {
            ok(podman().args(["stop", "-t", "30", &name]));
            Instant::now()
        })
    };
    let mut closes = Vec::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        closes.push(c.expect(&["closed: 1001"]).0);
    }
    let stopped = stopper.join().expect("podman stop");
    assert_eq!(
        inspect(&name, "{{.State.ExitCode}}"),
        "0",
        "the drain did not end in a clean exit"
    );
    for close in closes {
        assert!(
            close <= stopped,
            "a client was closed only after the container exited"
        );
    }
    assert!(
        stopped - stopping < Duration::from_secs(20),
        "the drain took {:?}",
        stopped - stopping
    );
    for c in [alice, bob, carol] {
        assert!(c.wait().success());
    }

    // The store is on the volume: the next container has the room's history.
    let again = format!("{name}-again");
    start(&again);
    let mut dave = Client::start(&mut connect(&sluice_token(&config_path, "dave")));
    dave.send(r#"{"type":"chat.join","id":"j","channel":"room:1"}"#);
    dave.expect(&[
        r#""type":"ack""#,
        r#""id":"j""#,
        "hello from the container",
        "after the reload",
    ]);
    drop(dave);
    eprintln!(
        "image test: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------- fleet

/// A Kubernetes Secret document for `podman secret create`, as podman 4.3
/// reads it: it writes each `data` value into the volume as it stands (no
/// base64 decoding) and ignores `stringData`, so the values go into `data`
/// in plain text (docs/deploy.md).
fn secret_yaml(name: &str, kind: &str, entries: &[(&str, &str)]) -> String {
    let mut text =
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: {kind}\ndata:\n");
    for (key, value) in entries {
        let chomp = if value.ends_with('\n') { "|" } else { "|-" };
        text.push_str(&format!("  {key}: {chomp}\n"));
        for line in value.lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    text
}

/// The last lines each container of the fleet's pod logged.
fn pod_logs() -> String {
    let names = ok(podman().args([
        "ps",
        "-a",
        "--filter",
        "pod=sluice-fleet",
        "--format",
        "{{.Names}}",
    ]));
    let mut text = String::new();
    for name in names.lines() {
        let out = run_for(
            podman().args(["logs", "--tail", "15", name]),
            PODMAN_TIMEOUT,
        );
        text.push_str(&format!(
            "--- {name}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text
}

/// Run `args` in the pod's network namespace (a client beside the pod's
/// containers, as another pod of the cluster would be).
fn in_pod(pid: &str, program: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{pid}/ns/net")).arg(program);
    cmd
}

#[test]
fn fleet_runs_as_a_podman_pod() {
    if podman_skipped("fleet_runs_as_a_podman_pod") {
        return;
    }
    let _lock = podman_lock();
    let started = Instant::now();
    build_images(true);
    let pod_file = repo_root().join("deploy/podman/sluice-fleet.yaml");
    let pod_text = std::fs::read_to_string(&pod_file).expect("the pod file");

    // Every volume podman makes for it (emptyDirs, ConfigMaps, Secrets) is
    // named, and kept across runs: start clean, end clean.
    let secrets = ["sluice-secrets", "sluice-tls", "nats-auth"];
    let mut volumes: Vec<String> = pod_text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- name: sluice-fleet-")
                .map(|n| format!("sluice-fleet-{n}"))
        })
        .collect();
    volumes.extend([
        "sluice-fleet-config".into(),
        "sluice-fleet-nats-config".into(),
    ]);
    volumes.extend(secrets.iter().map(|s| (*s).to_owned()));
    // The containers, removed with their anonymous volumes (the image's
    // VOLUME /etc/sluice, which the pod does not mount whole).
    let containers: Vec<String> = pod_text
        .lines()
        .filter_map(|l| l.strip_prefix("    - name: "))
        .filter(|n| {
            n.rsplit_once('-').is_some_and(|(kind, i)| {
                ["nats", "sluice"].contains(&kind) && i.parse::<u8>().is_ok()
            })
        })
        .map(|n| format!("sluice-fleet-{n}"))
        .collect();
    assert_eq!(containers.len(), 5, "the pod's containers: {containers:?}");
    let cleanup = Cleanup::default();
    let remove = |cleanup: &Cleanup| {
        for v in &volumes {
            cleanup.add(&["volume", "rm", "-f", v]);
        }
        for s in secrets {
            cleanup.add(&["secret", "rm", s]);
        }
        cleanup.add(&["pod", "rm", "-f", "-t", "0", "sluice-fleet"]);
        let mut rm = vec!["rm", "--ignore", "-f", "-v", "-t", "0"];
        rm.extend(containers.iter().map(String::as_str));
        cleanup.add(&rm);
    };
    remove(&Cleanup::default());
    remove(&cleanup);

    // The Secrets, as an operator makes them.
    let files = TempDir::new();
    let bin = sluice_tests::sluice_bin();
    ok(Command::new(&bin)
        .args(["cert", "--out"])
        .arg(files.0.join("wss")));
    let read = |p: &str| std::fs::read_to_string(files.0.join(p)).expect("read");
    let (admin_token, manage_token, nats_token) = (random_hex(24), random_hex(24), random_hex(24));
    let jwt_key = random_hex(32);
    let nats_auth = format!("authorization {{ token: \"{nats_token}\" }}");
    for (name, text) in [
        (
            "sluice-secrets",
            secret_yaml(
                "sluice-secrets",
                "Opaque",
                &[
                    ("app-jwt.key", &jwt_key),
                    ("admin.token", &admin_token),
                    ("app-manage.token", &manage_token),
                    ("nats.token", &nats_token),
                ],
            ),
        ),
        (
            "sluice-tls",
            secret_yaml(
                "sluice-tls",
                "kubernetes.io/tls",
                &[
                    ("tls.crt", &read("wss/cert.pem")),
                    ("tls.key", &read("wss/key.pem")),
                ],
            ),
        ),
        (
            "nats-auth",
            secret_yaml("nats-auth", "Opaque", &[("auth.conf", &nats_auth)]),
        ),
    ] {
        let path = files.0.join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("write secret");
        ok(podman().args(["secret", "create", name]).arg(&path));
    }

    // Play it, on the pod's own loopback network.
    ok(podman()
        .args(["kube", "play", "--network", "none"])
        .arg(&pod_file));
    let infra = ok(podman().args([
        "pod",
        "inspect",
        "--format",
        "{{.InfraContainerID}}",
        "sluice-fleet",
    ]));
    let pid = inspect(infra.trim(), "{{.State.Pid}}");
    for node in ["sluice-fleet-sluice-0", "sluice-fleet-sluice-1"] {
        let admin = if node.ends_with('0') {
            "127.0.0.1:9464"
        } else {
            "127.0.0.1:9465"
        };
        let deadline = Instant::now() + WAIT;
        while !run_for(
            podman().args([
                "exec",
                node,
                "/usr/local/bin/sluice",
                "health",
                "--admin",
                admin,
            ]),
            PODMAN_TIMEOUT,
        )
        .status
        .success()
        {
            assert!(
                Instant::now() < deadline,
                "{node} not ready within {} s; the pod's logs:\n{}",
                WAIT.as_secs(),
                pod_logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // The tenant pushes its chat handler through node 0's management API,
    // over HTTPS (the server's own certificate); plain HTTP to that port
    // gets nowhere.
    let curl = PathBuf::from("/usr/bin/curl");
    let ca = files.0.join("wss/cert.pem");
    let body = files.0.join("push.json");
    std::fs::write(
        &body,
        serde_json::json!({
            "component": base64::engine::general_purpose::STANDARD.encode(std::fs::read(handlers::CHAT).expect("chat.wasm")),
            "stage": "stable",
        })
        .to_string(),
    )
    .expect("write push");
    let pushed = ok(in_pod(&pid, &curl)
        .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {manage_token}")])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg("https://127.0.0.1:9443/v1/tenants/app/handlers/chat/versions"));
    assert!(
        pushed.trim_end().ends_with("201"),
        "push over TLS: {pushed}"
    );
    let plain = ok(in_pod(&pid, &curl).args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Authorization: Bearer {admin_token}"),
        "http://127.0.0.1:9443/v1/tenants/app/handlers",
    ]));
    assert_eq!(
        plain, "400",
        "plain HTTP on the TLS port was answered {plain}"
    );
    // Node 1, on its own management port, serves what was pushed on node 0.
    let listed = ok(in_pod(&pid, &curl)
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {admin_token}")])
        .arg("https://127.0.0.1:9444/v1/tenants/app/handlers"));
    assert!(
        listed.contains("\"chat\""),
        "node 1 does not list the pushed handler: {listed}"
    );
    // The operator reloads node 1 over the same HTTPS port.
    let reloaded = ok(in_pod(&pid, &curl)
        .args(["-sS", "-X", "POST", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {admin_token}")])
        .arg("https://127.0.0.1:9444/reload"));
    assert!(
        reloaded.starts_with("reloaded: ") && reloaded.trim_end().ends_with("200"),
        "POST /reload over HTTPS: {reloaded}"
    );

    // Clients on the two nodes chat through NATS.
    let token = |sub: &str| {
        ok(podman().args([
            "exec",
            "sluice-fleet-sluice-0",
            "/usr/local/bin/sluice",
            "token",
            "-c",
            "/etc/sluice/config/sluice-0.toml",
            "--tenant",
            "app",
            "--sub",
            sub,
            "--scope",
            "chat:write",
        ]))
        .trim()
        .to_owned()
    };
    let wss_ca = files.0.join("wss/cert.pem");
    let connect = |port: u16, token: &str| {
        let mut cmd = in_pod(&pid, &bin);
        cmd.args(["connect", &format!("wss://127.0.0.1:{port}/ws/app"), "--ca"])
            .arg(&wss_ca)
            .args(["--token", token]);
        cmd
    };
    let mut alice = Client::start(&mut connect(8443, &token("alice")));
    let bob_token = token("bob");
    let mut bob = Client::start(&mut connect(8444, &bob_token));
    for c in [&mut alice, &mut bob] {
        c.expect(&[r#""type":"welcome""#]);
        // A pushed handler reaches every node within moments.
        let deadline = Instant::now() + WAIT;
        loop {
            c.send(r#"{"type":"chat.join","id":"j","channel":"room:1"}"#);
            let (_, line) = c.expect(&[r#""id":"j""#]);
            if line.contains(r#""type":"ack""#) {
                break;
            }
            assert!(Instant::now() < deadline, "chat.join never served: {line}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    alice.send(
        r#"{"type":"chat.send","id":"s1","channel":"room:1","data":{"text":"across the fleet"}}"#,
    );
    alice.expect(&[r#""type":"ack""#, r#""id":"s1""#]);
    bob.expect(&[r#""type":"event""#, "across the fleet"]);

    // Node 1 drains (what a rolling update does to a pod): its client is
    // closed with 1001, reconnects to node 0 and finds the room's history
    // (JetStream), and keeps chatting with node 0's client.
    let stopper =
        std::thread::spawn(|| ok(podman().args(["stop", "-t", "40", "sluice-fleet-sluice-1"])));
    bob.expect(&["closed: 1001"]);
    stopper.join().expect("podman stop");
    assert_eq!(inspect("sluice-fleet-sluice-1", "{{.State.ExitCode}}"), "0");
    assert!(bob.wait().success());
    let mut bob = Client::start(&mut connect(8443, &bob_token));
    bob.send(r#"{"type":"chat.join","id":"j","channel":"room:1"}"#);
    bob.expect(&[r#""type":"ack""#, r#""id":"j""#, "across the fleet"]);
    bob.send(
        r#"{"type":"chat.send","id":"s2","channel":"room:1","data":{"text":"back on node 0"}}"#,
    );
    bob.expect(&[r#""type":"ack""#, r#""id":"s2""#]);
    alice.expect(&[r#""type":"event""#, "back on node 0"]);
    eprintln!(
        "fleet test: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}
