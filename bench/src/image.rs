//! Image scenario (issue 10 benchmark): a 3-layer image of ~60 MB of
//! random content (gzip cannot shrink it; layer 1 is the busybox rootfs
//! plus random data) pushed to Debian's docker-registry on loopback, then
//! cold-cache pulls (berth pull --insecure vs ctr image pull --plain-http
//! into the benchmark's private containerd) and runs of /bin/true from the
//! image (berth run --rm IMAGE vs ctr run --rm IMAGE). Layers are built
//! with tar/gzip/sha256sum and pushed with curl (the registry's monolithic
//! upload), so the benchmark needs no extra crates.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testing::Daemon;

use crate::containerd::Containerd;
use crate::measure::{Runner, median, time_interleaved, timed};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// Random bytes per layer: three layers, ~60 MB in all.
const LAYER_RANDOM_BYTES: usize = 20 << 20;

#[derive(Debug, Default, Clone, Copy)]
pub struct ImageTimes {
    pub image_mb: f64,
    pub pull_berth: Option<Duration>,
    pub pull_ctr: Option<Duration>,
    pub run_berth: Option<Duration>,
    pub run_ctr: Option<Duration>,
}

/// A docker-registry on 127.0.0.1, killed (by its PID) when dropped.
pub struct Registry {
    child: Child,
    pub addr: String,
}

impl Registry {
    pub fn start(dir: &Path) -> Option<Registry> {
        if !Path::new(REGISTRY_BIN).exists() {
            eprintln!("{REGISTRY_BIN} missing (apt-get install docker-registry); skipping the image figures");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).ok()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        let text = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: berth-bench\n",
            dir.join("registry").display()
        );
        std::fs::write(&config, text).ok()?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut r = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&r.addr).is_err() {
            if Instant::now() > deadline || !matches!(r.child.try_wait(), Ok(None)) {
                eprintln!("docker-registry did not come up; skipping the image figures");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256_file(path: &Path) -> Option<String> {
    let out = sh(Command::new("sha256sum").arg(path))?;
    Some(format!("sha256:{}", out.split_whitespace().next()?))
}

/// A layer blob: path of its .tar.gz, digest, size and diff id.
struct Blob {
    path: PathBuf,
    digest: String,
    size: u64,
}

/// Tars and gzips `dir`; returns the blob and the diff id.
fn make_layer(dir: &Path, out: &Path) -> Option<(Blob, String)> {
    let tar = out.with_extension("tar");
    sh(Command::new("tar").args(["--numeric-owner", "-C"]).arg(dir).arg("-cf").arg(&tar).arg("."))?;
    let diff_id = sha256_file(&tar)?;
    let gz = std::fs::File::create(out).ok()?;
    let ok = Command::new("gzip").args(["-1", "-n", "-c"]).arg(&tar).stdout(gz).status().ok()?.success();
    let _ = std::fs::remove_file(&tar);
    ok.then_some(())?;
    let size = std::fs::metadata(out).ok()?.len();
    Some((Blob { path: out.to_path_buf(), digest: sha256_file(out)?, size }, diff_id))
}

fn random_file(path: &Path) -> Option<()> {
    let mut src = std::fs::File::open("/dev/urandom").ok()?;
    let mut dst = std::fs::File::create(path).ok()?;
    let copied = std::io::copy(&mut std::io::Read::take(&mut src, LAYER_RANDOM_BYTES as u64), &mut dst).ok()?;
    (copied == LAYER_RANDOM_BYTES as u64).then_some(())
}

/// Uploads a blob in one request (POST for a session, PUT with the digest).
fn push_blob(addr: &str, repo: &str, path: &Path, digest: &str) -> Option<()> {
    let head = sh(Command::new("curl")
        .args(["-sf", "-D", "-", "-o", "/dev/null", "-X", "POST"])
        .arg(format!("http://{addr}/v2/{repo}/blobs/uploads/")))?;
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location").then(|| v.trim().to_string())
    })?;
    let url = if location.starts_with("http") { location } else { format!("http://{addr}{location}") };
    let sep = if url.contains('?') { '&' } else { '?' };
    sh(Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary"])
        .arg(format!("@{}", path.display()))
        .arg(format!("{url}{sep}digest={digest}")))?;
    Some(())
}

/// Builds and pushes `repo:v1`: the busybox rootfs as its first layer,
/// then `random_layers` layers of random data (the first one holding some
/// too, when there are any), with `cmd` as its Cmd; returns its reference
/// and size in MB.
pub fn build_and_push(d: &Daemon, addr: &str, repo: &str, random_layers: usize, cmd: &[&str]) -> Option<(String, f64)> {
    let work = d.dir().join(format!("bench-image-{repo}"));
    let mut layers = Vec::new();
    for i in 1..=random_layers.max(1) {
        let dir = work.join(format!("l{i}"));
        std::fs::create_dir_all(&dir).ok()?;
        if i == 1 {
            sh(Command::new("cp").arg("-a").arg(d.rootfs.join(".")).arg(&dir))?;
        }
        if random_layers > 0 {
            random_file(&dir.join(format!("random{i}")))?;
        }
        layers.push(make_layer(&dir, &work.join(format!("l{i}.tar.gz")))?);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .ok()?;
    let config_path = work.join("config.json");
    std::fs::write(&config_path, &config).ok()?;
    let config_digest = sha256_file(&config_path)?;
    for (blob, _) in &layers {
        push_blob(addr, repo, &blob.path, &blob.digest)?;
    }
    push_blob(addr, repo, &config_path, &config_digest)?;
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(b, _)| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": b.digest, "size": b.size})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config.len()},
        "layers": descs,
    }))
    .ok()?;
    let manifest_path = work.join("manifest.json");
    std::fs::write(&manifest_path, manifest).ok()?;
    sh(Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json"])
        .arg("--data-binary")
        .arg(format!("@{}", manifest_path.display()))
        .arg(format!("http://{addr}/v2/{repo}/manifests/v1")))?;
    let total: u64 = layers.iter().map(|(b, _)| b.size).sum();
    let _ = std::fs::remove_dir_all(&work);
    Some((format!("{addr}/{repo}:v1"), total as f64 / (1 << 20) as f64))
}

/// Forgets the image in berthd and frees its content and snapshots.
fn berth_forget(d: &Daemon, reference: &str) -> bool {
    d.berth(&["rmi", "-f", reference]).code == 0 && d.berth(&["image", "prune"]).code == 0
}

/// Median of `runs` cold-cache pulls each, then of `runs` runs each.
pub fn run(d: &Daemon, ctr: Option<&Containerd>, runs: usize) -> ImageTimes {
    let Some(registry) = Registry::start(d.dir()) else {
        return ImageTimes::default();
    };
    eprintln!("image: building and pushing a 3-layer random image …");
    let Some((reference, image_mb)) = build_and_push(d, &registry.addr, "bench", 3, &["/bin/sh"]) else {
        eprintln!("building or pushing the benchmark image failed; skipping the image figures");
        return ImageTimes::default();
    };
    eprintln!("image: {image_mb:.1} MB; {runs} cold pulls each (berth, ctr) …");
    let mut berth_pulls = Some(Vec::new());
    let mut ctr_pulls = ctr.map(|_| Vec::new());
    for round in 0..runs.max(1) {
        if let Some(v) = &mut berth_pulls {
            let pulled = (round == 0 || berth_forget(d, &reference))
                .then(|| timed(|| d.berth(&["pull", "-q", "--insecure", &reference]).code == 0))
                .flatten();
            match pulled {
                Some(t) => v.push(t),
                None => {
                    eprintln!("  berth pull failed: {}", d.berth(&["pull", "-q", "--insecure", &reference]).stderr);
                    berth_pulls = None;
                }
            }
        }
        if let (Some(v), Some(c)) = (&mut ctr_pulls, ctr) {
            let pulled = (round == 0 || c.image_forget(&reference)).then(|| timed(|| c.pull(&reference))).flatten();
            match pulled {
                Some(t) => v.push(t),
                None => {
                    eprintln!("  ctr image pull failed");
                    ctr_pulls = None;
                }
            }
        }
    }
    eprintln!("image: {runs} runs each of /bin/true from the image …");
    let mut runners: Vec<Runner<'_>> =
        vec![Box::new(|_| d.berth(&["run", "--rm", "--pull", "never", &reference, "/bin/true"]).code == 0)];
    if let Some(c) = ctr {
        runners.push(Box::new(|i| c.run_image_rm(&reference, &format!("img{i}"))));
    }
    let runs_t = time_interleaved(runs, &mut runners);
    drop(runners);
    let _ = berth_forget(d, &reference);
    if let Some(c) = ctr {
        c.image_forget(&reference);
    }
    drop(registry);
    ImageTimes {
        image_mb,
        pull_berth: berth_pulls.and_then(|mut v| median(&mut v)),
        pull_ctr: ctr_pulls.and_then(|mut v| median(&mut v)),
        run_berth: runs_t[0],
        run_ctr: runs_t.get(1).copied().flatten(),
    }
}
