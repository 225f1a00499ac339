//! Crash safety through the API: a loop of writes, `kill -9` of the server at a random moment,
//! restart on the same data directory; no acknowledged write may be missing, and a watch from
//! the last acknowledged resourceVersion resumes with the writes after it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Server;

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut s = Server::start();
    let k = Arc::new(s.kubectl());
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (k, acked, stop) = (k.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let manifest = format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: w{i}}}\ndata: {{i: \"{i}\"}}\n"
                );
                if let Ok(out) = k.run_with_stdin(
                    &["create", "-f", "-", "-o", "jsonpath={.metadata.resourceVersion}"],
                    Some(&manifest),
                ) {
                    if out.success() {
                        acked
                            .lock()
                            .unwrap()
                            .push((format!("w{i}"), out.stdout.trim().to_string()));
                    }
                }
                i += 1;
            }
        })
    };
    // Kill at a random moment after a handful of acknowledged writes.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let want = 5 + (nanos % 10) as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < want {
        assert!(
            std::time::Instant::now() < deadline,
            "writes too slow:\n{}",
            s.log_tail()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 150)));
    s.crash_and_restart();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    let acked = acked.lock().unwrap().clone();
    let names = s.ok(&k, &["get", "cm", "-o", "name"]);
    for (name, _) in &acked {
        assert!(
            names.contains(&format!("configmap/{name}\n")),
            "acknowledged {name} lost after kill -9:\n{names}"
        );
    }

    // A watch from the first acknowledged version replays the later writes.
    let (first, first_rv) = acked[0].clone();
    let last = &acked[acked.len() - 1].0;
    let path =
        format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={first_rv}&timeoutSeconds=2");
    let events = s.ok(&k, &["get", "--raw", &path]);
    assert!(
        !events.contains(&format!("\"name\":\"{first}\"")),
        "the watch must start after {first_rv}"
    );
    assert!(
        events.contains(&format!("\"name\":\"{last}\"")),
        "watch did not resume:\n{events}"
    );
    // And the server keeps serving writes after the restart.
    s.apply(&k, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after}\n");
}
