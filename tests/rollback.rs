//! The per-machine rollback record (docs/FORMAT.md §4b) while other tresor
//! commands run at the same time: no newer version is lost, and a directory
//! put back after a newer one was seen is refused.

use crate::util::{test_env_dir, tresor, TestStore};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Child;

/// The signed body of a store's directory.
fn body(store: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("directory.json")).unwrap()).unwrap();
    v["signed"].clone()
}

/// (store id, directory version) of a store.
fn id_and_version(store: &Path) -> (String, u64) {
    let b = body(store);
    (
        b["store_id"].as_str().unwrap().to_string(),
        b["version"].as_u64().unwrap(),
    )
}

/// This test's rollback record.
fn seen() -> BTreeMap<String, u64> {
    let p = test_env_dir().join("state/tresor/seen.json");
    serde_json::from_slice(&fs::read(&p).unwrap()).unwrap()
}

/// `tresor role add STORE NAME` as the store's administrator, started, not waited for.
fn spawn_role_add(s: &TestStore, name: &str) -> Child {
    tresor()
        .args(["role", "add"])
        .arg(&s.store)
        .arg(name)
        .arg("--pse")
        .arg(&s.pse)
        .arg("--passphrase-file")
        .arg(&s.pass)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_ok(children: Vec<Child>) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Twelve stores changed at once, round after round: every store's newest
/// version ends up in the record (without the lock, parallel
/// read-modify-writes dropped some).
#[test]
fn concurrent_commands_lose_no_recorded_version() {
    let stores: Vec<TestStore> = (0..12).map(|_| TestStore::new(&[])).collect();
    for round in 0..6 {
        wait_ok(
            stores
                .iter()
                .map(|s| spawn_role_add(s, &format!("r{round}")))
                .collect(),
        );
        let seen = seen();
        for s in &stores {
            let (id, version) = id_and_version(&s.store);
            assert_eq!(
                seen.get(&id),
                Some(&version),
                "round {round}: store {id} is at version {version}, the record says {:?}",
                seen.get(&id)
            );
        }
    }
}

/// An older, validly signed directory put back after an admin command that
/// ran beside commands on other stores is still a rollback (exit 6).
#[test]
fn a_put_back_directory_is_found_while_other_commands_run() {
    let victim = TestStore::new(&[]);
    let others: Vec<TestStore> = (0..6).map(|_| TestStore::new(&[])).collect();
    for trial in 0..8 {
        let old = fs::read(victim.store.join("directory.json")).unwrap();
        let mut children: Vec<Child> = others
            .iter()
            .map(|s| spawn_role_add(s, &format!("b{trial}")))
            .collect();
        children.push(spawn_role_add(&victim, &format!("t{trial}")));
        wait_ok(children);
        let new = fs::read(victim.store.join("directory.json")).unwrap();
        fs::write(victim.store.join("directory.json"), &old).unwrap();
        let out = tresor().arg("matrix").arg(&victim.store).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "trial {trial}: {err}");
        assert!(err.contains("rollback"), "{err}");
        fs::write(victim.store.join("directory.json"), &new).unwrap();
        // Control: the current directory is accepted.
        let out = tresor().arg("matrix").arg(&victim.store).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
