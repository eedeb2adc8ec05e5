//! The quarantine's records on both stores: the byte cap holds whatever
//! arrives, listings are newest first with filters and cursors, and items
//! go when released or expired, taking their bytes with them.

use std::sync::Arc;

use crate::store_conformance::{embedded, redis};
use ipn_relay::store::Store;
use ipn_relay::store::quarantine::{
    DESCRIPTION_BYTES, Diagnosis, QuarantineFilter, QuarantineItem, QuarantineSize, QuarantineStore, Quarantined,
    Refusal,
};

fn item(id: &str, source: &str, reason: Refusal, at: u64, body: &[u8]) -> QuarantineItem {
    let headers = vec![("x-nowpayments-sig".to_owned(), "ab".repeat(64))];
    let size = Quarantined::size_of(&headers, body);
    QuarantineItem {
        meta: Quarantined {
            id: format!("qtn_{at:012x}{id}"),
            source: source.into(),
            reason,
            received_at: at,
            client: "203.0.113.9".into(),
            headers,
            size,
            // Unique unless a test says otherwise.
            digest: format!("digest-{id}-{at}"),
            diagnosis: Diagnosis { checked_at: at, summary: "wrong secret".into(), ..Default::default() },
        },
        body: body.to_vec(),
    }
}

/// What an item counts for besides its body: the signature header and the
/// description's allowance.
const HEADER_BYTES: u64 = 17 + 128 + DESCRIPTION_BYTES;

async fn the_cap_holds_and_items_keep_their_bytes(s: Arc<impl Store>) {
    let body = vec![b'x'; 855];
    let one = HEADER_BYTES + 855;
    assert_eq!(one, 3048);
    let items: Vec<_> =
        (0..5).map(|i| item(&format!("{i:016x}"), "np", Refusal::InvalidSignature, 1_000 + i, &body)).collect();
    // Room for three of five.
    assert_eq!(s.quarantine(items.clone(), 3 * one + 500).await.unwrap().kept, 3);
    assert_eq!(s.quarantine_size().await.unwrap(), QuarantineSize { items: 3, bytes: 3 * one });
    // Kept ids are not kept twice; a smaller item still fits.
    let small = item("00000000000000ff", "np", Refusal::InvalidSignature, 2_000, b"{}");
    let done = s.quarantine(vec![items[0].clone(), small.clone()], 3 * one + HEADER_BYTES + 2).await.unwrap();
    assert_eq!((done.kept, done.duplicates), (1, 1));
    assert_eq!(s.quarantine_size().await.unwrap(), QuarantineSize { items: 4, bytes: 3 * one + HEADER_BYTES + 2 });
    // Even an empty callback takes room: a flood of them stops at the cap.
    let empty = item("00000000000000fd", "np", Refusal::InvalidSignature, 2_002, b"");
    assert_eq!(s.quarantine(vec![empty], 3 * one + HEADER_BYTES + 2 + HEADER_BYTES - 1).await.unwrap().kept, 0);
    // The body and headers come back byte for byte, even when not text.
    let odd = item("00000000000000fe", "np", Refusal::InvalidSignature, 2_001, b"\xff\x00{\"a\":1}");
    assert_eq!(s.quarantine(vec![odd.clone()], u64::MAX).await.unwrap().kept, 1);
    assert_eq!(s.quarantined(&odd.meta.id).await.unwrap(), Some(odd.clone()));
    assert_eq!(s.quarantined("qtn_000000000000nothere").await.unwrap(), None);
    // An empty batch is nothing.
    assert_eq!(s.quarantine(vec![], 0).await.unwrap().kept, 0);
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.quarantine.items, 5);
}

async fn listing_is_newest_first_filtered_and_paged(s: Arc<impl Store>) {
    let mut all = Vec::new();
    for i in 0..30u64 {
        let (source, reason) = match i % 3 {
            0 => ("np", Refusal::InvalidSignature),
            1 => ("nova", Refusal::StaleTimestamp),
            _ => ("nova", Refusal::InvalidSignature),
        };
        all.push(item(&format!("{i:016x}"), source, reason, 10_000 + i * 10, b"{}"));
    }
    assert_eq!(s.quarantine(all.clone(), u64::MAX).await.unwrap().kept, 30);
    let page = s.list_quarantine(&QuarantineFilter::default(), None, 100).await.unwrap();
    let ids: Vec<&str> = page.items.iter().map(|q| q.id.as_str()).collect();
    let mut expected: Vec<&str> = all.iter().map(|q| q.meta.id.as_str()).collect();
    expected.reverse();
    assert_eq!((ids, page.next_cursor), (expected.clone(), None));

    // Pages of 7 walk everything once, in order.
    let (mut walked, mut cursor) = (Vec::new(), None);
    loop {
        let page = s.list_quarantine(&QuarantineFilter::default(), cursor.as_deref(), 7).await.unwrap();
        assert!(page.items.len() <= 7);
        walked.extend(page.items.into_iter().map(|q| q.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(walked, expected);

    let filter = QuarantineFilter {
        source: Some("nova".into()),
        reason: Some(Refusal::StaleTimestamp),
        since: Some(10_040),
        until: Some(10_200),
    };
    let got: Vec<u64> =
        s.list_quarantine(&filter, None, 100).await.unwrap().items.iter().map(|q| q.received_at).collect();
    assert_eq!(got, vec![10_190, 10_160, 10_130, 10_100, 10_070, 10_040]);
    // The body stays out of listings, the description comes whole.
    let listed = &s.list_quarantine(&filter, None, 1).await.unwrap().items[0];
    assert_eq!(listed.diagnosis.summary, "wrong secret");
    assert_eq!(listed.headers[0].0, "x-nowpayments-sig");
}

async fn rediagnose_release_and_expire(s: Arc<impl Store>) {
    let items: Vec<_> =
        (0..6).map(|i| item(&format!("{i:016x}"), "np", Refusal::InvalidSignature, 5_000 + i * 1_000, b"{}")).collect();
    s.quarantine(items.clone(), u64::MAX).await.unwrap();
    let mut meta = items[1].meta.clone();
    meta.reason = Refusal::StaleTimestamp;
    meta.diagnosis.summary = "now stale".into();
    assert!(s.rediagnose(&meta).await.unwrap());
    let got = s.quarantined(&meta.id).await.unwrap().unwrap();
    assert_eq!((got.meta, got.body), (meta.clone(), b"{}".to_vec()));

    // Released: gone with its bytes; twice is harmless; unknown ids count 0.
    let ids = vec![items[1].meta.id.clone(), items[2].meta.id.clone(), "qtn_000000000000ffffffffffffffff".into()];
    assert_eq!(s.release_quarantined(&ids).await.unwrap(), 2);
    assert_eq!(s.release_quarantined(&ids).await.unwrap(), 0);
    assert!(!s.rediagnose(&meta).await.unwrap(), "a released item is not brought back");
    assert_eq!(s.quarantined(&meta.id).await.unwrap(), None);
    assert_eq!(s.quarantine_size().await.unwrap(), QuarantineSize { items: 4, bytes: 4 * (HEADER_BYTES + 2) });

    // Expiry: received before the cutoff, oldest first, bounded.
    assert_eq!(s.expire_quarantine(8_500, 1).await.unwrap(), 1); // 5000
    assert_eq!(s.expire_quarantine(8_500, 10).await.unwrap(), 1); // 8000
    assert_eq!(s.expire_quarantine(8_500, 10).await.unwrap(), 0);
    let left: Vec<u64> = s
        .list_quarantine(&QuarantineFilter::default(), None, 10)
        .await
        .unwrap()
        .items
        .iter()
        .map(|q| q.received_at)
        .collect();
    assert_eq!(left, vec![10_000, 9_000]);
    assert_eq!(s.quarantine_size().await.unwrap(), QuarantineSize { items: 2, bytes: 2 * (HEADER_BYTES + 2) });
    // Freed room is room again.
    let big = item("00000000000000aa", "np", Refusal::InvalidSignature, 20_000, &[b'y'; 100]);
    assert_eq!(s.quarantine(vec![big], 2 * (HEADER_BYTES + 2) + HEADER_BYTES + 100).await.unwrap().kept, 1);
}

/// Many writers at once cannot overshoot the cap between them.
async fn concurrent_writers_stay_under_the_cap(s: Arc<impl Store>) {
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..10u64 {
                let items = (0..5)
                    .map(|i| item(&format!("{w:04x}{b:04x}{i:08x}"), "np", Refusal::InvalidSignature, 1 + b, &[1; 55]))
                    .collect();
                s.quarantine(items, 20 * (HEADER_BYTES + 55)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.quarantine_size().await.unwrap(), QuarantineSize { items: 20, bytes: 20 * (HEADER_BYTES + 55) });
}

/// A provider's retries of one refused callback are kept once, with the
/// first receipt; once it is gone (admitted, expired), a later copy is kept.
async fn a_callback_received_again_is_kept_once(s: Arc<impl Store>) {
    let digest = Quarantined::digest_of("np", &[("x-nowpayments-sig".into(), "ab".repeat(64))], b"{}");
    let copy = |n: u64| {
        let mut i = item(&format!("{n:016x}"), "np", Refusal::InvalidSignature, 1_000 * n, b"{}");
        i.meta.digest = digest.clone();
        i
    };
    let done = s.quarantine(vec![copy(1), copy(2)], u64::MAX).await.unwrap();
    assert_eq!((done.kept, done.duplicates), (1, 1));
    let done = s.quarantine(vec![copy(3)], u64::MAX).await.unwrap();
    assert_eq!((done.kept, done.duplicates), (0, 1));
    let page = s.list_quarantine(&QuarantineFilter::default(), None, 10).await.unwrap();
    assert_eq!(page.items.iter().map(|q| q.received_at).collect::<Vec<_>>(), vec![1_000]);
    // Another source's identical bytes are another callback.
    assert_ne!(digest, Quarantined::digest_of("nova", &[("x-nowpayments-sig".into(), "ab".repeat(64))], b"{}"));
    assert_eq!(s.release_quarantined(&[copy(1).meta.id]).await.unwrap(), 1);
    let done = s.quarantine(vec![copy(4)], u64::MAX).await.unwrap();
    assert_eq!((done.kept, done.duplicates), (1, 0));
    assert_eq!(s.expire_quarantine(u64::MAX / 2, 10).await.unwrap(), 1);
    assert_eq!(s.quarantine(vec![copy(5)], u64::MAX).await.unwrap().kept, 1);
    assert_eq!(s.quarantine_size().await.unwrap(), QuarantineSize { items: 1, bytes: HEADER_BYTES + 2 });
}

on_both_stores!(
    embedded(),
    redis().await,
    [
        the_cap_holds_and_items_keep_their_bytes,
        listing_is_newest_first_filtered_and_paged,
        rediagnose_release_and_expire,
        concurrent_writers_stay_under_the_cap,
        a_callback_received_again_is_kept_once,
    ]
);

/// A damaged record on Redis (its description unreadable, or its size
/// gone) is left out of listings, reported as corrupt when read, and still
/// removed whole, giving its bytes back.
#[tokio::test]
async fn redis_damaged_records_are_skipped_reported_and_removed() {
    let (s, server) = redis().await;
    let items: Vec<_> =
        (0..3).map(|i| item(&format!("{i:016x}"), "np", Refusal::InvalidSignature, 7_000 + i, b"{}")).collect();
    s.quarantine(items.clone(), u64::MAX).await.unwrap();
    let mut raw = redis::Client::open(server.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = |i: usize| format!("{{conformance}}:qtn:{}", items[i].meta.id);
    let _: () = redis::cmd("HSET").arg(key(0)).arg("meta").arg("not json").query_async(&mut raw).await.unwrap();
    let _: () = redis::cmd("HDEL").arg(key(1)).arg("size").query_async(&mut raw).await.unwrap();
    let page = s.list_quarantine(&QuarantineFilter::default(), None, 10).await.unwrap();
    assert_eq!(page.items.len(), 2);
    assert!(matches!(s.quarantined(&items[0].meta.id).await, Err(ipn_relay::store::StoreError::Corrupt { .. })));
    let ids: Vec<String> = items.iter().map(|i| i.meta.id.clone()).collect();
    assert_eq!(s.release_quarantined(&ids).await.unwrap(), 3);
    let exists: usize = redis::cmd("EXISTS").arg(key(0)).arg(key(1)).query_async(&mut raw).await.unwrap();
    assert_eq!(exists, 0);
    // The item without a size could not give its bytes back; the others did.
    assert_eq!(s.quarantine_size().await.unwrap(), QuarantineSize { items: 0, bytes: HEADER_BYTES + 2 });
}
