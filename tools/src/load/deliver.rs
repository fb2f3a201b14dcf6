//! Getting one batch written: retries with backoff for transient errors,
//! bisection for a batch the server rejects, so that one bad item costs
//! itself and not its 63 neighbours.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tonic::{Code, Status};
use vitrine_proto::pb;

/// Something that upserts a batch: the router client, or a fake in tests.
pub trait Upsert: Clone + Send + Sync + 'static {
    fn upsert(&self, items: Vec<pb::Item>) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Deadline of one UpsertItems call. Shards embed the batch's text before
/// they answer; 64 titles take well under a second on one core, so 30 s is
/// only reached by a stuck call, which is then retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Upsert for crate::Client {
    async fn upsert(&self, items: Vec<pb::Item>) -> Result<(), Status> {
        let mut c = self.clone();
        let mut req = tonic::Request::new(pb::UpsertItemsRequest { items, ..Default::default() });
        req.set_timeout(CALL_TIMEOUT);
        match tokio::time::timeout(CALL_TIMEOUT, c.upsert_items(req)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))),
        }
    }
}

/// Exponential backoff with jitter: attempt `n` (0-based) waits a random
/// time in `[d/2, d]` where `d = min(base · 2ⁿ, cap)`. The random half keeps
/// four concurrent senders that failed together from retrying together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// 200 ms doubling to 5 s: five retries span about 6 to 12 s, long
    /// enough for a restarted shard to replay its log and come back.
    fn default() -> Self {
        Self { base: Duration::from_millis(200), cap: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// The longest wait before retry `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX)).min(self.cap)
    }

    /// The wait before retry `attempt`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let d = self.ceiling(attempt);
        d / 2 + d.mul_f64(rng.random::<f64>() / 2.0)
    }
}

/// How batches are sent.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Retries of a transient error before the batch's items are failed.
    pub retries: u32,
    pub backoff: Backoff,
}

/// Errors that a later attempt may not meet: the cluster is busy,
/// restarting, or a shard is briefly unreachable.
fn transient(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted)
}

/// Errors that every batch will meet (a wrong key, an old router): the load
/// stops instead of failing the whole file one batch at a time.
fn fatal(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented)
}

/// What became of a batch's items.
#[derive(Debug, Default, PartialEq)]
pub struct Delivered {
    pub loaded: u64,
    /// Items that were not written: (id, reason).
    pub failed: Vec<(String, String)>,
}

/// Sends `items`, retrying transient errors and bisecting a batch rejected
/// as invalid down to the items the server names invalid. Returns an error
/// only for a [`fatal`] status.
pub async fn deliver(sender: &impl Upsert, items: Vec<pb::Item>, policy: &Policy) -> Result<Delivered, Status> {
    let mut out = Delivered::default();
    // Depth-first over halves, so that the work stays in file order.
    let mut todo = vec![items];
    while let Some(batch) = todo.pop() {
        if batch.is_empty() {
            continue;
        }
        match send_with_retries(sender, &batch, policy).await {
            Ok(()) => out.loaded += batch.len() as u64,
            Err(s) if fatal(s.code()) => return Err(s),
            Err(s) if s.code() == Code::InvalidArgument && batch.len() > 1 => {
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                todo.push(second);
                todo.push(first);
            }
            Err(s) => {
                let reason = format!("{:?}: {}", s.code(), s.message());
                out.failed.extend(batch.into_iter().map(|i| (i.id, reason.clone())));
            }
        }
    }
    Ok(out)
}

async fn send_with_retries(sender: &impl Upsert, batch: &[pb::Item], policy: &Policy) -> Result<(), Status> {
    let mut attempt = 0;
    loop {
        match sender.upsert(batch.to_vec()).await {
            Err(s) if transient(s.code()) && attempt < policy.retries => {
                let wait = policy.backoff.delay(attempt, &mut rand::rng());
                tracing::debug!(code = ?s.code(), attempt, ?wait, "retrying a batch");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Rejects any batch holding an id that starts with "bad", like the
    /// router does for an invalid item, and fails the first `flaky` calls
    /// with UNAVAILABLE. Records every call's size.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<usize>>>,
        flaky: Arc<Mutex<u32>>,
        code: Option<Code>,
    }

    impl Upsert for Fake {
        async fn upsert(&self, items: Vec<pb::Item>) -> Result<(), Status> {
            self.calls.lock().unwrap().push(items.len());
            if let Some(code) = self.code {
                return Err(Status::new(code, "no"));
            }
            {
                let mut f = self.flaky.lock().unwrap();
                if *f > 0 {
                    *f -= 1;
                    return Err(Status::unavailable("shard restarting"));
                }
            }
            match items.iter().find(|i| i.id.starts_with("bad")) {
                Some(i) => Err(Status::invalid_argument(format!("item {}: vector has 3 components", i.id))),
                None => Ok(()),
            }
        }
    }

    fn items(ids: &[&str]) -> Vec<pb::Item> {
        ids.iter().map(|id| pb::Item { id: id.to_string(), ..Default::default() }).collect()
    }

    fn fast(retries: u32) -> Policy {
        Policy { retries, backoff: Backoff { base: Duration::from_millis(1), cap: Duration::from_millis(2) } }
    }

    #[tokio::test]
    async fn bisection_isolates_the_invalid_items() {
        let fake = Fake::default();
        let ids: Vec<String> =
            (0..16).map(|i| if i == 3 || i == 12 { format!("bad{i}") } else { format!("ok{i}") }).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let d = deliver(&fake, items(&refs), &fast(0)).await.unwrap();
        assert_eq!(d.loaded, 14);
        let failed: Vec<&str> = d.failed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(failed, vec!["bad3", "bad12"]);
        assert!(d.failed[0].1.contains("InvalidArgument: item bad3"), "{:?}", d.failed);
        // 1 + 2 halves + 4 quarters + 4 eighths + 4 singles: log-many calls
        // per bad item, not one per item.
        assert!(fake.calls.lock().unwrap().len() <= 15, "{:?}", fake.calls);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_fail_the_batch() {
        let fake = Fake { flaky: Arc::new(Mutex::new(2)), ..Default::default() };
        let d = deliver(&fake, items(&["a", "b"]), &fast(5)).await.unwrap();
        assert_eq!((d.loaded, d.failed.len()), (2, 0));
        assert_eq!(fake.calls.lock().unwrap().len(), 3);

        let fake = Fake { flaky: Arc::new(Mutex::new(10)), ..Default::default() };
        let d = deliver(&fake, items(&["a", "b"]), &fast(3)).await.unwrap();
        assert_eq!(d.loaded, 0);
        assert_eq!(d.failed.len(), 2);
        assert!(d.failed[0].1.starts_with("Unavailable"));
        assert_eq!(fake.calls.lock().unwrap().len(), 4, "1 try + 3 retries");
    }

    #[tokio::test]
    async fn authentication_errors_stop_the_load() {
        let fake = Fake { code: Some(Code::Unauthenticated), ..Default::default() };
        let e = deliver(&fake, items(&["a"]), &fast(5)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(fake.calls.lock().unwrap().len(), 1, "not retried");
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let b = Backoff::default();
        let ceilings: Vec<u64> = (0..7).map(|a| b.ceiling(a).as_millis() as u64).collect();
        assert_eq!(ceilings, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.ceiling(100), Duration::from_secs(5), "no overflow");
        let mut rng = rand::rng();
        for attempt in 0..8 {
            for _ in 0..100 {
                let d = b.delay(attempt, &mut rng);
                assert!(d >= b.ceiling(attempt) / 2 && d <= b.ceiling(attempt), "{attempt}: {d:?}");
            }
        }
    }
}
