//! `kill -9` at a random moment loses no acknowledged write.
//!
//! The test re-runs its own executable as a child (selected by an environment variable; this
//! target has `harness = false` so that its `main` can be either) that writes into a data
//! directory from 16 concurrent tasks and prints a line for every acknowledged write. The parent SIGKILLs it at a random moment, reopens the
//! directory and checks every acknowledged write is there; several rounds share one directory, so
//! recovery also runs over the logs, snapshots and torn tails left by earlier crashes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use keel_store::embedded::{EmbeddedStore, Options};
use keel_store::{Store, StoreError};

const DIR_ENV: &str = "KEEL_STORE_CRASH_DIR";
const ROUND_ENV: &str = "KEEL_STORE_CRASH_ROUND";
const WRITERS: usize = 16;
const ROUNDS: usize = 8;

/// Small segments, so that crashes also land in the middle of rotations and snapshots.
fn options() -> Options {
    Options {
        segment_bytes: 256 << 10,
        history_revisions: 2_000,
        ..Options::default()
    }
}

fn random_below(n: u64) -> u64 {
    RandomState::new().build_hasher().finish() % n
}

/// One acknowledged write, as printed by the child.
#[derive(Debug)]
enum Ack {
    /// `key` was created with `value` at `revision` (and is never updated afterwards).
    Create {
        key: String,
        value: String,
        revision: u64,
    },
    /// `key` was deleted at `revision`.
    Delete { key: String, revision: u64 },
    /// Writer `writer`'s counter key reached `value` at `revision`.
    Counter { key: String, value: u64, revision: u64 },
}

fn parse_ack(line: &str) -> Option<Ack> {
    let start = line.find("ACK|")?;
    let mut fields = line[start + 4..].split('|');
    let kind = fields.next()?;
    let key = fields.next()?.to_owned();
    let revision = fields.next()?.parse().ok()?;
    let value = fields.next()?.to_owned();
    match kind {
        "create" => Some(Ack::Create { key, value, revision }),
        "delete" => Some(Ack::Delete { key, revision }),
        "counter" => Some(Ack::Counter {
            key,
            value: value.parse().ok()?,
            revision,
        }),
        _ => None,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(DIR_ENV) {
        Ok(dir) => runtime.block_on(child(dir)),
        Err(_) => {
            println!("test kill_9_loses_no_acknowledged_write ...");
            runtime.block_on(kill_9_loses_no_acknowledged_write());
            println!("test kill_9_loses_no_acknowledged_write ... ok");
        }
    }
}

/// The child: writes until it is killed.
async fn child(dir: String) {
    let round = std::env::var(ROUND_ENV).unwrap_or_default();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(EmbeddedStore::open(&dir, options()).unwrap());
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let round = round.clone();
        tasks.push(tokio::spawn(async move { writer(&*store, &round, w).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Writes forever (until killed): creates keys, deletes every tenth right after, and bumps a
/// counter with compare-and-swap.
async fn writer(store: &dyn Store, round: &str, w: usize) {
    let counter_key = format!("/crash/counter/{w}");
    let mut counter = match store.get(&counter_key).await.unwrap() {
        Some(kv) => kv,
        None => match store.create(&counter_key, Bytes::from_static(b"0")).await {
            Ok(kv) => kv,
            Err(StoreError::AlreadyExists { .. }) => store.get(&counter_key).await.unwrap().unwrap(),
            Err(e) => panic!("{e}"),
        },
    };
    let mut count: u64 = std::str::from_utf8(&counter.value).unwrap().parse().unwrap();
    for n in 0u64.. {
        let key = format!("/crash/keys/{round}/{w}/{n:08}");
        let value = format!("r{round}-w{w}-n{n}-{}", "x".repeat(200 + (n % 7) as usize * 100));
        let kv = store.create(&key, Bytes::from(value.clone())).await.unwrap();
        print_ack("create", &key, kv.mod_revision, &value);
        if n % 10 == 0 {
            let deleted = store.delete(&key, Some(kv.mod_revision)).await.unwrap();
            print_ack("delete", &key, deleted.revision, "");
        }
        if n % 3 == 0 {
            count += 1;
            counter = store
                .update(
                    &counter_key,
                    Bytes::from(count.to_string()),
                    Some(counter.mod_revision),
                )
                .await
                .unwrap();
            print_ack("counter", &counter_key, counter.mod_revision, &count.to_string());
        }
    }
}

fn print_ack(kind: &str, key: &str, revision: u64, value: &str) {
    let line = format!("ACK|{kind}|{key}|{revision}|{value}\n");
    let mut out = std::io::stdout().lock();
    // One write per line: a kill leaves at most one partial line, which the parent ignores.
    out.write_all(line.as_bytes()).unwrap();
    out.flush().unwrap();
}

/// Runs one child round in `dir`, kills it at a random moment, returns its acknowledgements.
fn crash_round(dir: &Path, round: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if let Some(ack) = parse_ack(&String::from_utf8_lossy(&line)) {
                acks.push(ack);
                let _ = tx.send(());
            }
        }
        acks
    });
    // Let it get going (rotations happen every few hundred writes), then pull the plug.
    let wanted = 200 + random_below(1500) as usize;
    for _ in 0..wanted {
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("the child stopped acknowledging writes");
        }
    }
    std::thread::sleep(Duration::from_micros(random_below(20_000)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

async fn verify(store: &dyn Store, acks: &[Ack]) {
    let current = store.current_revision().await.unwrap();
    let mut revisions = std::collections::HashSet::new();
    let mut last_counter: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut deleted = std::collections::HashSet::new();
    for ack in acks {
        let revision = match ack {
            Ack::Create { revision, .. } | Ack::Delete { revision, .. } | Ack::Counter { revision, .. } => {
                *revision
            }
        };
        assert!(
            revisions.insert(revision),
            "revision {revision} acknowledged twice"
        );
        assert!(
            revision <= current,
            "acknowledged revision {revision} is beyond the recovered {current}"
        );
        match ack {
            Ack::Delete { key, .. } => {
                deleted.insert(key.as_str());
            }
            Ack::Counter { key, value, revision } => {
                let entry = last_counter.entry(key).or_insert((0, 0));
                if *value > entry.0 {
                    *entry = (*value, *revision);
                }
            }
            Ack::Create { .. } => {}
        }
    }
    for ack in acks {
        if let Ack::Create { key, value, revision } = ack {
            let found = store.get(key).await.unwrap();
            if deleted.contains(key.as_str()) {
                assert_eq!(found, None, "{key} was deleted with an acknowledgement");
                continue;
            }
            match found {
                Some(kv) => {
                    assert_eq!(kv.mod_revision, *revision, "{key}");
                    assert_eq!(kv.value, Bytes::from(value.clone()), "{key}");
                }
                // An unacknowledged delete may have been written just before the kill.
                None => {
                    let n = key.rsplit('/').next().and_then(|n| n.parse::<u64>().ok());
                    assert!(
                        n.is_some_and(|n| n % 10 == 0),
                        "acknowledged create of {key} at revision {revision} is lost"
                    );
                }
            }
        }
    }
    for (key, (value, revision)) in last_counter {
        let kv = store
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} lost"));
        let stored: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
        assert!(
            stored == value || (stored == value + 1 && kv.mod_revision > revision),
            "{key}: acknowledged {value} at {revision}, recovered {stored} at {}",
            kv.mod_revision
        );
    }
}

async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut total = 0;
    for round in 0..ROUNDS {
        let acks = crash_round(dir.path(), round);
        total += acks.len();
        let store = EmbeddedStore::open(dir.path(), options()).unwrap();
        verify(&store, &acks).await;
        eprintln!(
            "round {round}: {} acknowledged writes verified, recovered revision {}",
            acks.len(),
            store.current_revision().await.unwrap()
        );
        drop(store);
    }
    assert!(total >= ROUNDS * 200, "only {total} acknowledged writes checked");
}
