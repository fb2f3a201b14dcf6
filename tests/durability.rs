//! Nothing acknowledged is lost (docs/RELIABILITY.md): `kill -9` in a loop
//! during writes, crashes in the middle of a snapshot, damaged WAL and
//! snapshot files, and SIGTERM during writes. Every test drives real
//! `vitrine-router` and `vitrine-shard` processes on loopback with a client
//! that records each acknowledged write, then checks the restarted shards
//! against that record.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Request};
use vitrine_integration_tests::{connect, vitrine_cli, Cluster, Options};
use vitrine_proto::pb::{self, shard_client::ShardClient, vitrine_client::VitrineClient};
use vitrine_router::topology::Topology;

const DIM: usize = 16;
/// Ids the writer draws from: small enough that upserts, updates and
/// deletes hit the same items again and again.
const ID_POOL: u32 = 900;
const USER_POOL: u32 = 300;

fn unit(rng: &mut impl Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// What the client knows it was told.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Present { title: String, vector: Vec<f32> },
    Absent,
}

#[derive(Default, Clone)]
struct Ledger {
    /// The last acknowledged write of each id.
    items: HashMap<String, Expect>,
    /// Ids whose last write failed: it may or may not have been applied, so
    /// they are not checked until a later write is acknowledged.
    unsure: HashSet<String>,
    /// Ids with a write that timed out: it might still be applied after a
    /// later one, so they are never checked again.
    never: HashSet<String>,
    /// Every acknowledged event.
    events: Vec<pb::Event>,
    acked_writes: u64,
    failed_writes: u64,
}

impl Ledger {
    fn checkable(&self) -> impl Iterator<Item = (&String, &Expect)> {
        self.items.iter().filter(|(id, _)| !self.unsure.contains(*id) && !self.never.contains(*id))
    }
}

/// One random write batch (upsert, delete or events), recorded in the ledger.
/// Concurrent writers use distinct `prefix`es: the ledger can only know the
/// order of writes to one id when a single writer makes them.
async fn write_once(
    c: &mut VitrineClient<Channel>,
    rng: &mut StdRng,
    ledger: &std::sync::Mutex<Ledger>,
    prefix: &str,
    n: u64,
) {
    let pick = rng.random_range(0..10);
    let ids: Vec<String> = (0..if pick < 6 { 12 } else { 5 })
        .map(|_| format!("{prefix}item-{}", rng.random_range(0..ID_POOL)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let timeout = Duration::from_secs(3);
    if pick < 6 {
        let items: Vec<pb::Item> = ids
            .iter()
            .map(|id| pb::Item {
                id: id.clone(),
                title: format!("{id} version {n}"),
                vector: Some(pb::Vector { values: unit(rng) }),
                ..Default::default()
            })
            .collect();
        let mut req = Request::new(pb::UpsertItemsRequest { items: items.clone(), ..Default::default() });
        req.set_timeout(timeout);
        let result = c.upsert_items(req).await;
        let mut l = ledger.lock().unwrap();
        match result {
            Ok(_) => {
                l.acked_writes += 1;
                for it in items {
                    l.unsure.remove(&it.id);
                    let vector = it.vector.map(|v| v.values).unwrap_or_default();
                    l.items.insert(it.id, Expect::Present { title: it.title, vector });
                }
            }
            Err(s) => failed(&mut l, &ids, &s),
        }
    } else if pick < 8 {
        let mut req = Request::new(pb::DeleteItemsRequest { ids: ids.clone(), ..Default::default() });
        req.set_timeout(timeout);
        let result = c.delete_items(req).await;
        let mut l = ledger.lock().unwrap();
        match result {
            Ok(_) => {
                l.acked_writes += 1;
                for id in ids {
                    l.unsure.remove(&id);
                    l.items.insert(id, Expect::Absent);
                }
            }
            Err(s) => failed(&mut l, &ids, &s),
        }
    } else {
        let events: Vec<pb::Event> = (0..10)
            .map(|i| pb::Event {
                user_id: format!("user-{}", rng.random_range(0..USER_POOL)),
                item_id: format!("item-{}", rng.random_range(0..ID_POOL)),
                r#type: pb::EventType::Click as i32,
                timestamp_ms: (n * 100 + i) as i64,
            })
            .collect();
        let mut req = Request::new(pb::RecordEventsRequest { events: events.clone(), ..Default::default() });
        req.set_timeout(timeout);
        let result = c.record_events(req).await;
        let mut l = ledger.lock().unwrap();
        match result {
            Ok(_) => {
                l.acked_writes += 1;
                l.events.extend(events);
            }
            // Unacknowledged events may or may not be stored; none is checked.
            Err(_) => l.failed_writes += 1,
        }
    }
}

fn failed(l: &mut Ledger, ids: &[String], s: &tonic::Status) {
    l.failed_writes += 1;
    // A refused connection or a dead shard cannot apply the write later; a
    // timeout might still be running on a live shard.
    let late = matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled | Code::Unknown);
    for id in ids {
        if late {
            l.never.insert(id.clone());
        } else {
            l.unsure.insert(id.clone());
        }
    }
}

/// Checks every checkable id, every acknowledged event, and that each
/// present item is found by a search for its own vector. Returns the number
/// of checks made.
async fn verify(cluster: &Cluster, ledger: &Ledger, shards: u32) -> u64 {
    let mut c = connect(&cluster.url()).await.unwrap();
    let expected: Vec<(&String, &Expect)> = ledger.checkable().collect();
    let mut checks = 0u64;
    for chunk in expected.chunks(200) {
        let ids = chunk.iter().map(|(id, _)| (*id).clone()).collect();
        let got = c
            .get_items(pb::GetItemsRequest { ids, with_vectors: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let found: HashMap<&str, &pb::Item> = got.items.iter().map(|i| (i.id.as_str(), i)).collect();
        for (id, want) in chunk {
            match (want, found.get(id.as_str())) {
                (Expect::Absent, None) => {}
                (Expect::Present { title, .. }, Some(item)) => {
                    assert_eq!(&item.title, title, "{id}: an acknowledged update was lost")
                }
                (Expect::Absent, Some(item)) => panic!("{id}: acknowledged delete undone; found {:?}", item.title),
                (Expect::Present { title, .. }, None) => panic!("{id}: acknowledged write {title:?} lost"),
            }
            checks += 1;
        }
    }
    for (id, want) in &expected {
        let Expect::Present { vector, .. } = want else { continue };
        let req = |k| pb::SearchRequest {
            query: Some(pb::search_request::Query::Vector(pb::Vector { values: vector.clone() })),
            k,
            ..Default::default()
        };
        let hits = c.search(req(10)).await.unwrap().into_inner().hits;
        if !hits.iter().any(|h| &h.id == *id) {
            // The index is approximate: after many updates (tombstones) a
            // self-search at the default ef can miss a point now and then. A
            // larger k raises the shards' ef; a point missing from the
            // index is missed at any k.
            let hits = c.search(req(200)).await.unwrap().into_inner().hits;
            assert!(hits.iter().any(|h| &h.id == *id), "{id} is stored but a search by its own vector misses it");
        }
        checks += 1;
    }
    let topo = Topology::uniform(256, shards).unwrap();
    let mut by_user: HashMap<&str, Vec<&pb::Event>> = HashMap::new();
    for e in &ledger.events {
        by_user.entry(e.user_id.as_str()).or_default().push(e);
    }
    let mut clients = Vec::new();
    for addr in &cluster.shard_addrs {
        clients.push(ShardClient::connect(format!("http://{addr}")).await.unwrap());
    }
    for (user, events) in by_user {
        let shard = topo.shard_of(user) as usize;
        let profile =
            clients[shard].get_profile(pb::GetProfileRequest { user_id: user.to_string() }).await.unwrap().into_inner();
        let stored: HashSet<(String, i64)> = profile.events.into_iter().map(|e| (e.item_id, e.timestamp_ms)).collect();
        for e in events {
            assert!(stored.contains(&(e.item_id.clone(), e.timestamp_ms)), "acknowledged event lost: {e:?}");
            checks += 1;
        }
    }
    checks
}

/// `kill -9` a shard 20 times while a client writes continuously; after
/// each restart every acknowledged write is there, every acknowledged delete
/// is not, and every present item is found by its own vector. Shard 0 logs
/// with `--fsync always`, shard 1 with group commit; both take snapshots
/// every 48 KiB of log, so kills also land in the middle of snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_crash_loop() {
    let rounds: u32 = std::env::var("VITRINE_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut opts = Options::shards(2).vectors_only(DIM);
    opts.shard_args.extend(["--snapshot-wal-bytes".into(), "49152".into()]);
    opts.per_shard_args = vec![vec!["--fsync".into(), "always".into()], vec!["--fsync".into(), "group".into()]];
    let mut cluster = Cluster::start(opts);
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(tokio::sync::Mutex::new(()));
    let batches = Arc::new(AtomicU64::new(0));
    let writer = {
        let (ledger, stop, paused, batches) = (ledger.clone(), stop.clone(), paused.clone(), batches.clone());
        let url = cluster.url();
        tokio::spawn(async move {
            let mut c = connect(&url).await.unwrap();
            let mut rng = StdRng::seed_from_u64(20261129);
            while !stop.load(Ordering::Acquire) {
                let _turn = paused.lock().await;
                let n = batches.fetch_add(1, Ordering::AcqRel);
                write_once(&mut c, &mut rng, &ledger, "", n).await;
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut checks = 0;
    let started = Instant::now();
    for round in 0..rounds {
        let victim = (round % 2) as usize;
        tokio::time::sleep(Duration::from_millis(rng.random_range(250..700))).await;
        cluster.kill_shard(victim);
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        cluster.restart_shard(victim);
        tokio::task::block_in_place(|| cluster.wait_serving(2));
        let _hold = paused.lock().await;
        let copy = ledger.lock().unwrap().clone();
        checks += verify(&cluster, &copy, 2).await;
    }
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    let l = ledger.lock().unwrap();
    let snapshots: usize = (0..2)
        .map(|i| std::fs::read_dir(cluster.shard_data_dir(i).join("snapshots")).map(|d| d.count()).unwrap_or(0))
        .sum();
    eprintln!(
        "crash loop: {rounds} kill -9 rounds in {:.1} s; {} writes acknowledged, {} failed; {} checks of acknowledged \
         state; {} ids unchecked at the end (last write refused) and {} never checked again (a write timed out); \
         {snapshots} snapshot directories on disk",
        started.elapsed().as_secs_f64(),
        l.acked_writes,
        l.failed_writes,
        checks,
        l.unsure.len(),
        l.never.len()
    );
    assert!(l.acked_writes >= u64::from(rounds) * 5, "the writer made too little progress to test anything");
    assert!(l.failed_writes > 0, "no write ever hit a dead shard: the kills did not overlap the writes");
    assert!(snapshots > 0, "no snapshot was taken: the loop did not exercise snapshot recovery");
    cluster.all_alive().unwrap();
}

/// Loads items and events, then has the shard crash at each stage of a
/// snapshot (failpoints abort the process): while writing data, before the
/// rename that publishes it, and after publishing but before pruning. Each
/// restart recovers everything, and a later snapshot works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_stage_of_a_snapshot_loses_nothing() {
    let mut cluster = Cluster::start(Options::shards(1).vectors_only(DIM));
    let mut c = connect(&cluster.url()).await.unwrap();
    let ledger = std::sync::Mutex::new(Ledger::default());
    let mut rng = StdRng::seed_from_u64(11);
    let mut n = 0;
    for stage in ["snapshot::mid_data", "snapshot::before_rename", "snapshot::before_prune"] {
        for _ in 0..40 {
            n += 1;
            write_once(&mut c, &mut rng, &ledger, "", n).await;
        }
        // Restart with the failpoint armed, then ask for a snapshot.
        cluster.kill_shard(0);
        cluster.set_shard_env(0, vec![("FAILPOINTS".into(), format!("{stage}=return"))]);
        cluster.restart_shard(0);
        tokio::task::block_in_place(|| cluster.wait_serving(1));
        let err = c.create_snapshot(pb::CreateSnapshotRequest {}).await.unwrap().into_inner();
        assert!(!err.shards[0].error.is_empty(), "{stage}: the shard should have crashed mid-snapshot");
        let status = tokio::task::block_in_place(|| cluster.wait_shard_exit(0, Duration::from_secs(10)));
        assert!(status.is_some_and(|s| !s.success()), "{stage}: the failpoint did not abort the shard");
        cluster.set_shard_env(0, Vec::new());
        cluster.restart_shard(0);
        tokio::task::block_in_place(|| cluster.wait_serving(1));
        let l = ledger.lock().unwrap().clone();
        assert_eq!(l.failed_writes, 0);
        let checks = verify(&cluster, &l, 1).await;
        assert!(checks > 100, "{stage}: {checks} checks");
    }
    let r = c.create_snapshot(pb::CreateSnapshotRequest {}).await.unwrap().into_inner();
    assert_eq!(r.shards[0].error, "", "a snapshot after the crashes works");
    assert!(r.shards[0].items > 0);
    cluster.kill_shard(0);
    cluster.restart_shard(0);
    tokio::task::block_in_place(|| cluster.wait_serving(1));
    let copy = ledger.lock().unwrap().clone();
    verify(&cluster, &copy, 1).await;
    let info = c.cluster_info(pb::ClusterInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.shards[0].snapshot_seq, r.shards[0].seq, "recovery used the newest snapshot");
}

/// Damaged files: a corrupt WAL record stops start-up with a message naming
/// the file and `--repair-wal`; a damaged newest snapshot is set aside and
/// recovery falls back to the previous one plus the longer log, losing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_stop_start_up_or_fall_back_without_loss() {
    let mut cluster = Cluster::start(Options::shards(1).vectors_only(DIM));
    let mut c = connect(&cluster.url()).await.unwrap();
    let ledger = std::sync::Mutex::new(Ledger::default());
    let mut rng = StdRng::seed_from_u64(12);
    let mut n = 0;
    let mut write = |count: u64| {
        let start = n;
        n += count;
        start..n
    };
    for i in write(30) {
        write_once(&mut c, &mut rng, &ledger, "", i).await;
    }
    c.create_snapshot(pb::CreateSnapshotRequest {}).await.unwrap();
    for i in write(30) {
        write_once(&mut c, &mut rng, &ledger, "", i).await;
    }
    c.create_snapshot(pb::CreateSnapshotRequest {}).await.unwrap();
    for i in write(30) {
        write_once(&mut c, &mut rng, &ledger, "", i).await;
    }
    let dir = cluster.shard_data_dir(0);

    // Damage the newest snapshot's data: recovery sets it aside.
    cluster.kill_shard(0);
    let mut snaps: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("snapshot-"))
        .collect();
    snaps.sort();
    assert_eq!(snaps.len(), 2, "two snapshots are kept");
    let data = snaps[1].join("data.log");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();
    cluster.restart_shard(0);
    tokio::task::block_in_place(|| cluster.wait_serving(1));
    let copy = ledger.lock().unwrap().clone();
    verify(&cluster, &copy, 1).await;
    let log = cluster.shard_log(0);
    assert!(log.contains("snapshot failed verification"), "{log}");
    assert!(std::fs::read_dir(dir.join("snapshots")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_str()
        .unwrap()
        .starts_with("quarantine-")));

    // Flip a byte inside the first WAL record after the snapshot in use:
    // start-up refuses and says how to proceed.
    cluster.kill_shard(0);
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("wal-"))
        .collect();
    segments.sort();
    let target = segments.iter().find(|p| std::fs::metadata(p).unwrap().len() > 64).expect("a segment with records");
    let mut bytes = std::fs::read(target).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(target, bytes).unwrap();
    cluster.restart_shard(0);
    let status = tokio::task::block_in_place(|| cluster.wait_shard_exit(0, Duration::from_secs(20)));
    assert!(status.is_some_and(|s| !s.success()), "start-up must refuse a corrupt WAL");
    let log = cluster.shard_log(0);
    assert!(log.contains("is corrupt at byte") && log.contains("--repair-wal"), "{log}");
    // With the repair flag it starts, dropping that record and what follows.
    cluster.add_shard_args(0, &["--repair-wal"]);
    cluster.restart_shard(0);
    tokio::task::block_in_place(|| cluster.wait_serving(1));
    c.upsert_items(pb::UpsertItemsRequest {
        items: vec![pb::Item {
            id: "after-repair".into(),
            vector: Some(pb::Vector { values: unit(&mut rng) }),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .expect("writes are accepted after a repair");
}

/// SIGTERM during writes: the shard refuses new requests, finishes those in
/// flight, flushes the log and exits 0; everything it acknowledged is there
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let mut opts = Options::shards(1).vectors_only(DIM);
    opts.shard_args.extend(["--fsync".into(), "group".into(), "--drain-ms".into(), "300".into()]);
    let mut cluster = Cluster::start(opts);
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (ledger, stop, url) = (ledger.clone(), stop.clone(), cluster.url());
            tokio::spawn(async move {
                let mut c = connect(&url).await.unwrap();
                let mut rng = StdRng::seed_from_u64(w);
                let mut n = w * 1_000_000;
                let prefix = format!("w{w}-");
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    write_once(&mut c, &mut rng, &ledger, &prefix, n).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = tokio::task::block_in_place(|| cluster.terminate_shard(0, Duration::from_secs(15)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    assert!(status.is_some_and(|s| s.success()), "SIGTERM should end in exit 0, got {status:?}");
    let log = cluster.shard_log(0);
    assert!(log.contains("in-flight requests finished and the WAL is flushed"), "{log}");
    cluster.restart_shard(0);
    tokio::task::block_in_place(|| cluster.wait_serving(1));
    let l = ledger.lock().unwrap().clone();
    assert!(l.acked_writes > 10, "{} writes acknowledged before the signal", l.acked_writes);
    assert!(l.failed_writes > 0, "writes after the signal must be refused");
    verify(&cluster, &l, 1).await;
}

/// A mount namespace of the test's own holding a small tmpfs, so a shard
/// can run out of disk without touching the machine's file systems. Lives
/// as long as its holder process (`unshare … sleep`).
struct SmallDisk {
    holder: std::process::Child,
    /// Where the tmpfs is mounted (inside the namespace; an empty
    /// directory outside it).
    mount: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Self {
        use std::process::Command;
        let mount = tempfile::tempdir().unwrap();
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "900"])
            .spawn()
            .expect("unshare (util-linux) starts a mount namespace for the full-disk test");
        let pid = holder.id();
        // unshare execs sleep once the namespace exists.
        let started = Instant::now();
        while !std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with("sleep") {
            assert!(started.elapsed() < Duration::from_secs(10), "unshare did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "--", "mount", "-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs in the test's namespace failed (needs CAP_SYS_ADMIN)");
        Self { holder, mount }
    }

    /// `nsenter` into the namespace, for running a shard in it.
    fn wrapper(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"].iter().map(|s| s.to_string()).collect()
    }

    /// A path inside the tmpfs, as seen from outside the namespace.
    fn path(&self, relative: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root{}", self.holder.id(), self.mount.path().display()))
            .join(relative)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A full disk: writes are refused with RESOURCE_EXHAUSTED and are not
/// applied, reads keep working, nothing acknowledged is damaged, and writes
/// succeed again once space returns — also across a crash and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_recovers_when_space_returns() {
    use std::io::Write;
    let disk = SmallDisk::new("8m");
    let mut opts = Options::shards(1).vectors_only(DIM);
    opts.shard_wrapper = disk.wrapper();
    opts.data_root = Some(disk.mount.path().to_path_buf());
    let mut cluster = Cluster::start(opts);
    let mut c = connect(&cluster.url()).await.unwrap();
    let ledger = std::sync::Mutex::new(Ledger::default());
    let mut rng = StdRng::seed_from_u64(13);
    for n in 0..40 {
        write_once(&mut c, &mut rng, &ledger, "", n).await;
    }
    // Fill the rest of the disk.
    let filler = disk.path("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    drop(f);

    // The log's last page may still have room for a write or two (the file
    // system allocates whole pages); after that every write is refused.
    let mut refused = Vec::new();
    for n in 40..60 {
        let id = format!("full-{n}");
        let item = pb::Item {
            id: id.clone(),
            title: format!("written while the disk is full {n}"),
            description: "padding ".repeat(400),
            vector: Some(pb::Vector { values: unit(&mut rng) }),
            ..Default::default()
        };
        match c.upsert_items(pb::UpsertItemsRequest { items: vec![item.clone()], ..Default::default() }).await {
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("storage is full"), "{}", s.message());
                refused.push(id);
            }
            Ok(_) => {
                let vector = item.vector.map(|v| v.values).unwrap_or_default();
                ledger.lock().unwrap().items.insert(id, Expect::Present { title: item.title, vector });
            }
        }
    }
    eprintln!("full disk: {} of 20 writes refused with RESOURCE_EXHAUSTED", refused.len());
    assert!(refused.len() >= 15, "only {} of 20 writes refused on a full disk", refused.len());
    let got = c
        .get_items(pb::GetItemsRequest { ids: refused.clone(), with_vectors: false, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(got.into_inner().missing, refused, "refused writes are not applied");
    let copy = ledger.lock().unwrap().clone();
    assert_eq!(copy.failed_writes, 0);
    verify(&cluster, &copy, 1).await;

    // Space returns: writes are accepted again, and everything survives a crash.
    std::fs::remove_file(&filler).unwrap();
    for n in 60..100 {
        write_once(&mut c, &mut rng, &ledger, "", n).await;
    }
    cluster.kill_shard(0);
    cluster.restart_shard(0);
    tokio::task::block_in_place(|| cluster.wait_serving(1));
    let copy = ledger.lock().unwrap().clone();
    assert_eq!(copy.failed_writes, 0, "writes after space returned were all acknowledged");
    let checks = verify(&cluster, &copy, 1).await;
    assert!(checks > 100, "{checks}");
}

fn item(id: &str, title: &str, rng: &mut impl Rng) -> pb::Item {
    pb::Item {
        id: id.into(),
        title: title.into(),
        vector: Some(pb::Vector { values: unit(rng) }),
        ..Default::default()
    }
}

/// Ids among `ids` that the cluster has, and the titles it has for them.
async fn present(url: &str, ids: &[String]) -> HashMap<String, String> {
    let mut c = connect(url).await.unwrap();
    let got = c
        .get_items(pb::GetItemsRequest { ids: ids.to_vec(), with_vectors: false, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    got.items.into_iter().map(|i| (i.id, i.title)).collect()
}

/// `vitrine snapshot list` shows what every shard keeps, and `vitrine
/// snapshot restore` rolls stopped shards back to a snapshot: writes after
/// it are gone, deletes after it undone, and a snapshot copied from a
/// backup rebuilds a shard whose data directory was lost. A running shard's
/// directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_listed_and_restore_a_point_in_time() {
    let mut cluster = Cluster::start(Options::shards(2).vectors_only(DIM));
    let url = cluster.url();
    let mut c = connect(&url).await.unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let before: Vec<String> = (0..200).map(|i| format!("kept-{i}")).collect();
    let items = before.iter().map(|id| item(id, "v1", &mut rng)).collect();
    c.upsert_items(pb::UpsertItemsRequest { items, ..Default::default() }).await.unwrap();

    let out = vitrine_cli(&["--addr", &url, "--json", "snapshot", "create"]);
    assert!(out.status.success());
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seqs: Vec<u64> = created["shards"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), 2);

    // After the snapshot: new items, an update, deletes.
    let after: Vec<String> = (0..50).map(|i| format!("later-{i}")).collect();
    let mut items: Vec<pb::Item> = after.iter().map(|id| item(id, "v1", &mut rng)).collect();
    items.push(item(&before[0], "v2", &mut rng));
    c.upsert_items(pb::UpsertItemsRequest { items, ..Default::default() }).await.unwrap();
    c.delete_items(pb::DeleteItemsRequest { ids: before[100..120].to_vec(), ..Default::default() }).await.unwrap();
    let out = vitrine_cli(&["--addr", &url, "--json", "snapshot", "create"]);
    assert!(out.status.success());

    // Listed through the router: both snapshots on both shards, newest first.
    let out = vitrine_cli(&["--addr", &url, "--json", "snapshot", "list"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (shard, want) in listed["shards"].as_array().unwrap().iter().zip(&seqs) {
        let kept: Vec<u64> =
            shard["snapshots"].as_array().unwrap().iter().map(|s| s["seq"].as_u64().unwrap()).collect();
        assert_eq!(kept.len(), 2, "{shard}");
        assert!(kept[0] > kept[1] && kept[1] == *want, "{kept:?}, first snapshot {want}");
    }

    // A running shard's directory is refused, and nothing changes.
    let dir0 = cluster.shard_data_dir(0).display().to_string();
    let out = vitrine_cli(&["snapshot", "restore", "--data-dir", &dir0, "--seq", &seqs[0].to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running shard"));

    // Stop both shards, keep a backup of shard 0's first snapshot, restore.
    let backup = tempfile::tempdir().unwrap();
    for i in 0..2 {
        assert!(cluster.terminate_shard(i, Duration::from_secs(20)).is_some_and(|s| s.success()));
    }
    let snap0 = cluster.shard_data_dir(0).join("snapshots").join(format!("snapshot-{:020}", seqs[0]));
    let copy = backup.path().join("shard-0");
    std::fs::create_dir(&copy).unwrap();
    for f in ["data.log", "manifest.json"] {
        std::fs::copy(snap0.join(f), copy.join(f)).unwrap();
    }
    for (i, seq) in seqs.iter().enumerate() {
        let dir = cluster.shard_data_dir(i).display().to_string();
        let out = vitrine_cli(&["--json", "snapshot", "restore", "--data-dir", &dir, "--seq", &seq.to_string()]);
        assert!(out.status.success(), "restore of shard {i}");
    }
    let out = vitrine_cli(&["snapshot", "list", "--data-dir", &dir0, "--verify"]);
    assert!(out.status.success(), "the restored snapshot verifies");
    for i in 0..2 {
        cluster.restart_shard(i);
    }
    tokio::task::block_in_place(|| cluster.wait_serving(2));
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let got = present(&url, &all).await;
    assert_eq!(got.len(), before.len(), "exactly the items of the snapshot");
    assert!(before.iter().all(|id| got.contains_key(id)), "deletes after the snapshot are undone");
    assert_eq!(got[&before[0]], "v1", "the update after the snapshot is undone");

    // Shard 0 loses its directory; the backup copy rebuilds it.
    let mut shard0_items: Vec<String> = Vec::new();
    let topology = Topology::uniform(256, 2).unwrap();
    for id in &before {
        if topology.shard_of(id) == 0 {
            shard0_items.push(id.clone());
        }
    }
    assert!(cluster.terminate_shard(0, Duration::from_secs(20)).is_some_and(|s| s.success()));
    std::fs::remove_dir_all(cluster.shard_data_dir(0)).unwrap();
    let from = copy.display().to_string();
    let out = vitrine_cli(&["snapshot", "restore", "--data-dir", &dir0, "--from", &from]);
    assert!(out.status.success(), "restore from a backup copy");
    cluster.restart_shard(0);
    tokio::task::block_in_place(|| cluster.wait_serving(2));
    let got = present(&url, &shard0_items).await;
    assert_eq!(got.len(), shard0_items.len(), "shard 0 is back from the backup");

    // Writes go on from the restored state.
    c = connect(&url).await.unwrap();
    c.upsert_items(pb::UpsertItemsRequest { items: vec![item("after-restore", "v1", &mut rng)], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(present(&url, &["after-restore".to_string()]).await.len(), 1);
}
