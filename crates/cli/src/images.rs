//! Image verbs: `pull` (a live display on a terminal, else one line per
//! layer event), `images`, `rmi`, and
//! the image resolution of `run`/`create` (`--pull missing|always|never`).

use std::io::{IsTerminal, Read};

use berth_api::v1 as pb;
use serde_json::json;
use tokio_stream::StreamExt;

use crate::client::{Client, Failure};
use crate::output;

/// What `pull` was asked for.
pub struct PullArgs {
    pub reference: String,
    pub platform: String,
    pub insecure: bool,
    pub user: Option<String>,
    pub password_stdin: bool,
    pub quiet: bool,
    /// Progress to stderr (when a `run` pulls: stdout is the container's).
    pub to_stderr: bool,
}

/// When `run`/`create` pull the image first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Only when it is not present.
    Missing,
    Always,
    Never,
}

pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Bytes for people: 1.5 MB, 12 kB.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// One line for a progress event (the final one has no digest).
fn progress_line(p: &pb::PullProgress) -> String {
    if let Some(image) = &p.image {
        return format!("pulled {} ({})", image.name, image.manifest_digest);
    }
    if p.digest.is_empty() {
        return format!("{}...", p.status);
    }
    let total = human_size(p.total);
    match p.status.as_str() {
        "downloading" => format!("{}: downloading {}/{total}", short(&p.digest), human_size(p.current)),
        "exists" => format!("{}: already present", short(&p.digest)),
        "done" => format!("{}: downloaded {total}", short(&p.digest)),
        other => format!("{}: {other}", short(&p.digest)),
    }
}

fn read_password(a: &PullArgs) -> Result<String, Failure> {
    if !a.password_stdin {
        return Ok(String::new());
    }
    if a.user.is_none() {
        return Err(Failure::new("--password-stdin needs --user"));
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| Failure::new(format!("read password: {e}")))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// Pulls and prints progress (unless quiet); returns the image. Without
/// `--user`, the credentials `berth login` stored for the registry go.
pub async fn do_pull(c: &mut Client, a: PullArgs) -> Result<pb::Image, Failure> {
    let (user, password) = if a.user.is_none() && !a.password_stdin {
        match crate::auth::lookup(&crate::auth::registry_of(&a.reference))? {
            Some(c) => (Some(c.username), c.password),
            None => (None, String::new()),
        }
    } else {
        (a.user.clone(), read_password(&a)?)
    };
    let req = pb::PullRequest {
        reference: a.reference,
        platform: a.platform,
        insecure: a.insecure,
        username: user.unwrap_or_default(),
        password,
    };
    let mut stream = c.images.pull(req).await?.into_inner();
    let mut image = None;
    // A live display on a terminal; plain lines everywhere else.
    let terminal =
        !a.quiet && if a.to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    let mut display = crate::progress::Display::default();
    while let Some(event) = stream.next().await {
        let event = event?;
        if terminal {
            let drawn = if a.to_stderr {
                display.event(&mut std::io::stderr().lock(), &event)
            } else {
                display.event(&mut std::io::stdout().lock(), &event)
            };
            drawn.map_err(|e| Failure::new(format!("write progress: {e}")))?;
            if let Some(i) = event.image {
                image = Some(i);
            }
            continue;
        }
        let line = match (&event.image, a.quiet) {
            (_, false) => Some(progress_line(&event)),
            (Some(i), true) => Some(i.name.clone()),
            (None, true) => None,
        };
        match line {
            Some(l) if a.to_stderr => eprintln!("{}", output::escape(&l)),
            Some(l) => println!("{}", output::escape(&l)),
            None => {}
        }
        if let Some(i) = event.image {
            image = Some(i);
        }
    }
    image.ok_or_else(|| Failure::new("the pull ended without an image"))
}

pub async fn pull(c: &mut Client, a: PullArgs) -> Result<i32, Failure> {
    do_pull(c, a).await?;
    Ok(0)
}

fn created(i: &pb::Image) -> &str {
    if i.created.is_empty() { "-" } else { &i.created }
}

pub async fn images(c: &mut Client, json_out: bool) -> Result<i32, Failure> {
    let list = c.images.list(pb::ImageListRequest {}).await?.into_inner().images;
    if json_out {
        let v: Vec<_> = list
            .iter()
            .map(|i| {
                json!({"name": i.name, "manifest_digest": i.manifest_digest, "digest": i.digest,
                       "config_digest": i.config_digest, "chain_id": i.chain_id, "diff_ids": i.diff_ids,
                       "size": i.size, "created": i.created})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(0);
    }
    let mut rows = vec![vec!["REPOSITORY".into(), "TAG".into(), "DIGEST".into(), "SIZE".into(), "CREATED".into()]];
    for i in &list {
        let (repo, tag) = split_name(&i.name);
        rows.push(vec![
            repo.to_string(),
            tag.to_string(),
            short(&i.manifest_digest).to_string(),
            human_size(i.size),
            created(i).to_string(),
        ]);
    }
    print!("{}", output::render(rows));
    Ok(0)
}

/// `registry/repo:tag` → (`registry/repo`, `tag`); a digest reference has
/// `<none>` as its tag.
fn split_name(name: &str) -> (&str, &str) {
    if let Some((repo, _)) = name.split_once('@') {
        return (repo, "<none>");
    }
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "<none>"),
    }
}

pub async fn rmi(c: &mut Client, refs: Vec<String>, force: bool) -> Result<i32, Failure> {
    let mut failed = None;
    for r in refs {
        match c.images.remove(pb::ImageRemoveRequest { reference: r.clone(), force }).await {
            Ok(resp) => {
                println!("untagged {}", output::escape(&r));
                if let Some(f) = resp.into_inner().freed {
                    println!("{}", crate::image_admin::freed_line(&f));
                }
            }
            Err(e) => failed = Some(Failure::from(e)),
        }
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(0),
    }
}

/// Makes sure `reference` is present as `policy` says; returns its name.
pub async fn ensure(c: &mut Client, reference: &str, policy: PullPolicy, insecure: bool) -> Result<String, Failure> {
    let present = match c.images.get(pb::ImageRef { reference: reference.to_string() }).await {
        Ok(i) => Some(i.into_inner()),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(s.into()),
    };
    match (policy, present) {
        (PullPolicy::Always, _) | (PullPolicy::Missing, None) => {
            let a = PullArgs {
                reference: reference.to_string(),
                platform: String::new(),
                insecure,
                user: None,
                password_stdin: false,
                quiet: false,
                to_stderr: true,
            };
            Ok(do_pull(c, a).await?.name)
        }
        (_, Some(i)) => Ok(i.name),
        (PullPolicy::Never, None) => Err(Failure::new(format!("image {reference} is not present (--pull never)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_repository_and_tag() {
        assert_eq!(split_name("127.0.0.1:5000/test:1"), ("127.0.0.1:5000/test", "1"));
        assert_eq!(split_name("127.0.0.1:5000/test"), ("127.0.0.1:5000/test", "<none>"));
        assert_eq!(split_name("r.io/a@sha256:ab"), ("r.io/a", "<none>"));
    }

    #[test]
    fn progress_lines_and_sizes() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        let d = format!("sha256:{}", "ab".repeat(32));
        let p = pb::PullProgress {
            digest: d.clone(),
            current: 1000,
            total: 2000,
            status: "downloading".into(),
            ..Default::default()
        };
        assert_eq!(progress_line(&p), "abababababab: downloading 1.0 kB/2.0 kB");
        let p = pb::PullProgress { digest: d, total: 2000, done: true, status: "done".into(), ..Default::default() };
        assert_eq!(progress_line(&p), "abababababab: downloaded 2.0 kB");
    }
}
