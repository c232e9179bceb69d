//! End-to-end registry pull (issue 10, item 3; SPEC B31, B32): each test
//! starts Debian's `docker-registry` on loopback in a temp dir, pushes
//! images it builds itself with oci-client's push API, pulls them with
//! `Puller` into an in-memory sink, and checks what was fetched, verified
//! and committed; the token tests put a Docker token server
//! (`fixtures/token_proxy.rs`) in front of it. Needs the `docker-registry`
//! package installed.

mod fixtures;

use std::sync::atomic::{AtomicUsize, Ordering};

use berth_images::pull::{DOCKER_MANIFEST, OCI_MANIFEST};
use berth_images::{Auth, BlobSink, ImageError, Platform, Puller};
use berth_model::Code;
use fixtures::token_proxy::{Lifetime, SERVICE, TokenProxy};
use fixtures::{MemSink, Pushed, Registry, layer, push_image, push_index, quiet, recorder, sha256, two_layers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_and_by_digest_verifying_every_blob() {
    let reg = Registry::start(None);
    let pushed = push_image(&format!("{}/app:v1", reg.addr), &two_layers("v1"), "amd64", false, &Auth::Anonymous).await;

    let sink = MemSink::default();
    let (progress, seen) = recorder();
    let reference = format!("{}/app:v1", reg.addr);
    let pulled = Puller::new()
        .pull(&reference, &Platform::default(), &Auth::Anonymous, true, &sink, progress)
        .await
        .expect("pull by tag");
    assert_eq!(pulled.digest, pushed.manifest);
    assert_eq!(pulled.manifest_digest, pushed.manifest);
    assert_eq!(pulled.manifest_media_type, OCI_MANIFEST);
    assert_eq!(pulled.config_bytes, pushed.config);
    assert_eq!(pulled.config.architecture().to_string(), "amd64");
    assert_eq!(pulled.manifest.layers().len(), 2);
    let mut fetched = pulled.layers_fetched.clone();
    fetched.sort();
    let mut want: Vec<String> = pushed.layers.iter().map(|(d, _)| d.clone()).collect();
    want.sort();
    assert_eq!(fetched, want, "both layers fetched");
    assert!(pulled.layers_skipped.is_empty());
    // Layers, config and manifest are committed byte for byte, each under its own digest.
    for (digest, bytes) in &pushed.layers {
        assert_eq!(sink.get(digest).as_deref(), Some(&bytes[..]), "layer {digest}");
    }
    assert_eq!(sink.get(&sha256(&pushed.config)), Some(pushed.config.clone()));
    let manifest = sink.get(&pushed.manifest).expect("manifest committed");
    assert_eq!(sha256(&manifest), pushed.manifest);
    assert_eq!(sink.len(), 4);
    // Every layer reported progress up to a final done with current == total.
    let seen = seen.lock().expect("lock").clone();
    for (digest, bytes) in &pushed.layers {
        let last = seen.iter().rfind(|e| &e.0 == digest).expect("progress for layer");
        assert_eq!(*last, (digest.clone(), bytes.len() as u64, bytes.len() as u64, true, false));
    }

    let by_digest = format!("{}/app@{}", reg.addr, pushed.manifest);
    let sink2 = MemSink::default();
    let again = Puller::new()
        .pull(&by_digest, &Platform::default(), &Auth::Anonymous, true, &sink2, quiet())
        .await
        .expect("pull by digest");
    assert_eq!(again.digest, pushed.manifest);
    assert_eq!(again.config_bytes, pushed.config);
    assert_eq!(sink2.len(), 4);

    let missing = format!("{}/app@sha256:{}", reg.addr, "0".repeat(64));
    let err = Puller::new()
        .pull(&missing, &Platform::default(), &Auth::Anonymous, true, &MemSink::default(), quiet())
        .await
        .expect_err("unknown digest");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = Puller::new()
        .pull("not a reference!", &Platform::default(), &Auth::Anonymous, true, &MemSink::default(), quiet())
        .await
        .expect_err("bad reference");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_the_platform_from_an_oci_index_and_a_docker_list() {
    let reg = Registry::start(None);
    for (repo, docker) in [("oci", false), ("dock", true)] {
        let amd =
            push_image(&format!("{}/{repo}:amd64", reg.addr), &two_layers("amd64"), "amd64", docker, &Auth::Anonymous)
                .await;
        let arm =
            push_image(&format!("{}/{repo}:arm64", reg.addr), &two_layers("arm64"), "arm64", docker, &Auth::Anonymous)
                .await;
        let reference = format!("{}/{repo}:multi", reg.addr);
        let index = push_index(&reference, &[(&amd, "amd64"), (&arm, "arm64")], docker).await;

        let sink = MemSink::default();
        let pulled = Puller::new()
            .pull(&reference, &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
            .await
            .expect("default platform");
        assert_eq!(pulled.digest, index, "{repo}: the tag resolves to the index");
        assert_eq!(pulled.manifest_digest, amd.manifest, "{repo}: linux/amd64 by default");
        assert_eq!(pulled.config.architecture().to_string(), "amd64");
        assert!(sink.get(&index).is_some(), "{repo}: index committed");
        assert!(sink.get(&arm.manifest).is_none(), "{repo}: other platform untouched");

        let arm64: Platform = "linux/arm64".parse().expect("platform");
        let sink = MemSink::default();
        let pulled =
            Puller::new().pull(&reference, &arm64, &Auth::Anonymous, true, &sink, quiet()).await.expect("linux/arm64");
        assert_eq!(pulled.manifest_digest, arm.manifest, "{repo}: linux/arm64 chosen");
        assert_ne!(pulled.manifest_digest, amd.manifest);
        assert_eq!(pulled.config.architecture().to_string(), "arm64");
        let want = if docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
        assert_eq!(pulled.manifest_media_type, want);
        assert!(sink.get(&amd.manifest).is_none(), "{repo}: amd64 manifest not stored");

        let s390x: Platform = "linux/s390x".parse().expect("platform");
        let sink = MemSink::default();
        let err = Puller::new()
            .pull(&reference, &s390x, &Auth::Anonymous, true, &sink, quiet())
            .await
            .expect_err("no such platform");
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert_eq!(sink.len(), 0, "{repo}: nothing committed for a missing platform");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_base_layer_is_fetched_once() {
    let reg = Registry::start(None);
    let base = layer(&[("etc/os-release", "ID=berth-test\n")]);
    let first = vec![base.clone(), layer(&[("one", "1\n")])];
    let second = vec![base.clone(), layer(&[("two", "2\n")])];
    let a = push_image(&format!("{}/one:latest", reg.addr), &first, "amd64", false, &Auth::Anonymous).await;
    let b = push_image(&format!("{}/two:latest", reg.addr), &second, "amd64", false, &Auth::Anonymous).await;
    let base_digest = a.layers[0].0.clone();
    let new_digest = b.layers[1].0.clone();

    let sink = MemSink::default();
    let puller = Puller::new();
    puller
        .pull(&format!("{}/one:latest", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect("first pull");
    let (progress, seen) = recorder();
    let pulled = puller
        .pull(&format!("{}/two:latest", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, progress)
        .await
        .expect("second pull");
    assert_eq!(pulled.layers_skipped, vec![base_digest.clone()]);
    assert_eq!(pulled.layers_fetched, vec![new_digest.clone()]);
    assert_eq!(sink.attempts_of(&base_digest), 1, "the base layer was written once");
    assert_eq!(sink.attempts_of(&new_digest), 1);
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.iter().any(|e| e.0 == base_digest && e.3 && e.4), "the base layer is reported skipped");

    // The registry saw exactly one GET of the new layer and none of the base in `two`.
    assert_eq!(reg.wait_blob_gets("two", &new_digest, 1), 1, "{}", reg.log_text());
    assert_eq!(reg.blob_gets("two", &base_digest), 0);
    assert_eq!(reg.blob_gets("one", &base_digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_not_matching_its_digest_is_refused_and_not_committed() {
    let reg = Registry::start(None);
    let pushed =
        push_image(&format!("{}/bad:v1", reg.addr), &two_layers("bad"), "amd64", false, &Auth::Anonymous).await;
    let (corrupt, original) = pushed.layers[1].clone();
    // Same length, different bytes: only the digest can tell.
    let tampered: Vec<u8> = original.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(reg.blob_path(&corrupt), &tampered).expect("tamper with the stored blob");

    let sink = MemSink::default();
    let err = Puller::new()
        .pull(&format!("{}/bad:v1", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect_err("digest mismatch");
    match &err {
        ImageError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, &corrupt);
            assert_eq!(actual, &sha256(&tampered));
        }
        other => panic!("want DigestMismatch, got {other:?}"),
    }
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(sink.attempts_of(&corrupt), 1, "the sink was offered the stream");
    assert!(sink.get(&corrupt).is_none(), "the bad blob was not committed");
    assert!(sink.get(&pushed.manifest).is_none(), "no manifest without its blobs");
    assert!(sink.get(&sha256(&pushed.config)).is_none(), "no config without its layers");

    // A manifest served by digest must hash to that digest too: still valid
    // JSON, one size digit changed.
    let other = push_image(&format!("{}/bad:v2", reg.addr), &two_layers("v2"), "amd64", false, &Auth::Anonymous).await;
    let path = reg.blob_path(&other.manifest);
    let stored = std::fs::read_to_string(&path).expect("stored manifest");
    let size = format!("\"size\":{}", other.config.len());
    let bumped = format!("\"size\":{}", other.config.len() + 1);
    assert_eq!(size.len(), bumped.len(), "pick a config size whose successor has as many digits");
    std::fs::write(&path, stored.replacen(&size, &bumped, 1)).expect("tamper with the stored manifest");
    let sink = MemSink::default();
    let err = Puller::new()
        .pull(
            &format!("{}/bad@{}", reg.addr, other.manifest),
            &Platform::default(),
            &Auth::Anonymous,
            true,
            &sink,
            quiet(),
        )
        .await
        .expect_err("manifest digest mismatch");
    assert!(matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == other.manifest), "{err:?}");
    assert_eq!(sink.len(), 0, "nothing committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_htpasswd() {
    let reg = Registry::start(Some(("berth", "s3cret")));
    let user = Auth::Basic { username: "berth".into(), password: "s3cret".into() };
    let pushed = push_image(&format!("{}/private:v1", reg.addr), &two_layers("private"), "amd64", false, &user).await;
    let reference = format!("{}/private:v1", reg.addr);

    let sink = MemSink::default();
    let pulled = Puller::new()
        .pull(&reference, &Platform::default(), &user, true, &sink, quiet())
        .await
        .expect("pull with the right password");
    assert_eq!(pulled.digest, pushed.manifest);
    assert_eq!(sink.len(), 4);

    let wrong = Auth::Basic { username: "berth".into(), password: "wrong".into() };
    for (name, auth) in [("wrong password", wrong), ("anonymous", Auth::Anonymous)] {
        let sink = MemSink::default();
        let err =
            Puller::new().pull(&reference, &Platform::default(), &auth, true, &sink, quiet()).await.expect_err(name);
        assert!(matches!(err, ImageError::Unauthorized(_)), "{name}: {err:?}");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(sink.len(), 0, "{name}: nothing written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_needs_insecure() {
    let reg = Registry::start(None);
    push_image(&format!("{}/tls:v1", reg.addr), &two_layers("tls"), "amd64", false, &Auth::Anonymous).await;
    let sink = MemSink::default();
    let err = Puller::new()
        .pull(&format!("{}/tls:v1", reg.addr), &Platform::default(), &Auth::Anonymous, false, &sink, quiet())
        .await
        .expect_err("https to a plain-http registry");
    assert!(matches!(err, ImageError::Registry(_)), "{err:?}");
    assert_eq!(sink.len(), 0);
    assert!(!reg.log_text().contains("\"GET /v2/tls/manifests"), "no plain-http request was made");
}

/// The daemon spawns pulls onto its runtime: the future must be `Send`,
/// with a concrete sink and through `&dyn BlobSink` alike.
#[test]
fn the_pull_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let puller = Puller::new();
    let sink = MemSink::default();
    let platform = Platform::default();
    assert_send(puller.pull("127.0.0.1:1/x:y", &platform, &Auth::Anonymous, true, &sink, quiet()));
    let dyn_sink: &dyn BlobSink = &sink;
    assert_send(puller.pull("127.0.0.1:1/x:y", &platform, &Auth::Anonymous, true, dyn_sink, quiet()));
}

/// Pushes `repo:v1` to the registry and starts a token proxy in front of
/// it whose n-th token serves `lifetime(n)` requests.
async fn behind_tokens(reg: &Registry, repo: &str, lifetime: Lifetime) -> (Pushed, TokenProxy) {
    let pushed =
        push_image(&format!("{}/{repo}:v1", reg.addr), &two_layers(repo), "amd64", false, &Auth::Anonymous).await;
    (pushed, TokenProxy::start(&reg.addr, lifetime).await)
}

fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_tokens_are_fetched_and_used() {
    let reg = Registry::start(None);
    let (pushed, proxy) = behind_tokens(&reg, "tok", Box::new(|_| None)).await;
    let sink = MemSink::default();
    let reference = format!("{}/tok:v1", proxy.addr);
    let pulled = Puller::new()
        .pull(&reference, &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect("pull through the token flow");
    assert_eq!(pulled.digest, pushed.manifest);
    assert_eq!(sink.len(), 4, "layers, config and manifest committed");
    let c = proxy.counts();
    assert_eq!(count(&c.tokens), 1, "one token for the whole pull");
    assert!(count(&c.anonymous) >= 1, "the first request came without a token and was refused");
    assert_eq!(count(&c.stale), 0);
    assert!(count(&c.forwarded) >= 4, "manifest, config and both layers went through with the token");
    let query = proxy.token_queries().join("&");
    assert!(query.contains(&format!("service={SERVICE}")), "{query}");
    assert!(query.contains("scope=repository%3Atok%3Apull"), "{query}");
    // Without the token, or with another one, the registry stays closed.
    assert_eq!(proxy.status_of("/v2/tok/manifests/v1", None).await, 401);
    assert_eq!(proxy.status_of("/v2/tok/manifests/v1", Some("forged")).await, 401);
    assert_eq!(proxy.status_of("/v2/", Some("berth-token-1")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_pull_is_renewed_once() {
    let reg = Registry::start(None);
    // The first token serves the manifest only; the config request is refused.
    let (pushed, proxy) = behind_tokens(&reg, "rot", Box::new(|n| (n == 1).then_some(1))).await;
    let sink = MemSink::default();
    let reference = format!("{}/rot:v1", proxy.addr);
    let pulled = Puller::new()
        .pull(&reference, &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect("the pull renews the token");
    assert_eq!(pulled.digest, pushed.manifest);
    assert_eq!(sink.len(), 4);
    let c = proxy.counts();
    assert_eq!(count(&c.stale), 1, "the revoked token was refused once");
    assert_eq!(count(&c.tokens), 2, "and renewed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_refusing_every_token_fails_typed_after_one_renewal() {
    let reg = Registry::start(None);
    let (_pushed, proxy) = behind_tokens(&reg, "deny", Box::new(|_| Some(1))).await;
    let sink = MemSink::default();
    let reference = format!("{}/deny:v1", proxy.addr);
    let err = Puller::new()
        .pull(&reference, &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect_err("every token is revoked after one request");
    assert!(matches!(err, ImageError::Unauthorized(_)), "{err:?}");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let c = proxy.counts();
    assert_eq!((count(&c.tokens), count(&c.stale)), (2, 2), "one renewal, no loop");
    assert_eq!(sink.len(), 0, "nothing committed");
}
