//! The store disappearing mid-traffic: the redb file lives on a small tmpfs
//! that the test fills up. Ingress must answer 503 with `Retry-After` — never
//! a 200 for something it did not store — and recover by itself once space
//! is back, with nothing half-written by the failed commits.
//!
//! Mounting a tmpfs needs root (as in CI and the dev machines); the test
//! fails loudly rather than skipping if it cannot.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> (Tmpfs, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("cannot run `mount`");
        assert!(status.success(), "mounting a tmpfs failed: this test needs root (as in CI)");
        (Tmpfs(dir.path().to_owned()), dir)
    }

    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        // Write until the device is full; the error is the point.
        let _ = Command::new("dd").args(["if=/dev/zero", "bs=4096"]).arg(format!("of={}", filler.display())).status();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_gives_503_and_the_relay_recovers_when_space_returns() {
    let (fs, _dir) = Tmpfs::mount("3m");
    let relay = Relay::start_at(&fs.0.join("relay.redb"), "").await;
    let c = client();

    let (status, _) = answer(post_np(&c, &relay, &payment_ipn(1, "finished"), NP_SECRET).await).await;
    assert_eq!(status, 200);

    let filler = fs.fill();
    let mut refused = Vec::new();
    for i in 2..12 {
        let body = payment_ipn(i, "finished");
        let r = post_np(&c, &relay, &body, NP_SECRET).await;
        let retry_after = r.headers().get("retry-after").cloned();
        let (status, v) = answer(r).await;
        assert_ne!(status, 200, "a 200 while the disk is full: {v}");
        assert_eq!((status, error_code(&v)), (503, "unavailable"));
        assert!(retry_after.is_some(), "503 must carry Retry-After");
        refused.push(body);
    }
    let ready = c.get(format!("http://{}/readyz", relay.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readyz reports the store down");
    // Quiet for a while, still full: readiness must not drift back to ready
    // while admissions cannot commit (a heartbeat alone fits in free pages).
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    for _ in 0..5 {
        let ready = c.get(format!("http://{}/readyz", relay.admin)).send().await.unwrap();
        assert_eq!(ready.status(), 503, "ready again on a full disk after a quiet spell");
    }
    let metrics = c.get(format!("http://{}/metrics", relay.admin)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ipn_relay_store_ready 0"), "{metrics}");
    let (status, _) = answer(post_np(&c, &relay, &refused[0], NP_SECRET).await).await;
    assert_eq!(status, 503, "and admissions do fail");

    std::fs::remove_file(&filler).unwrap();
    // Ready again by itself, before any admission commits.
    let mut ready_again = false;
    for _ in 0..50 {
        if c.get(format!("http://{}/readyz", relay.admin)).send().await.unwrap().status() == 200 {
            ready_again = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready_again, "readyz recovers on its own once space is back");
    assert_eq!(relay.store.event_count().await.unwrap(), 1, "recovered without an admission");
    // The relay reopens the store by itself; every refused IPN is now new.
    for body in &refused {
        let (status, v) = answer(post_np(&c, &relay, body, NP_SECRET).await).await;
        assert_eq!((status, v["status"].as_str()), (200, Some("accepted")), "{v}");
    }
    let (_, v) = answer(post_np(&c, &relay, &payment_ipn(1, "finished"), NP_SECRET).await).await;
    assert_eq!(v["status"], "duplicate", "the event stored before the outage is still there");
    assert_eq!(relay.store.event_count().await.unwrap(), 11);
    let ready = c.get(format!("http://{}/readyz", relay.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
