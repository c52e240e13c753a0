//! The `db-node` binary, run as a real process.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_db-node"))
        .arg("--db")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap()
}

#[test]
fn subcommands_round_trip() {
    let dir = std::env::temp_dir().join(format!("dbnode-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = ok(&run(
        &dir,
        &["set", "users/alice", r#"{"age": 31, "tags": ["x"]}"#],
        None,
    ));
    assert_eq!(json(&out)["changed"], serde_json::json!(["users/alice"]));
    ok(&run(&dir, &["set", "users/bob"], Some(r#"{"age": 40}"#)));
    ok(&run(
        &dir,
        &[
            "--nosync",
            "update",
            "users/bob",
            r#"{"city": "Oslo", "age": null}"#,
        ],
        None,
    ));
    assert_eq!(
        json(&ok(&run(&dir, &["get", "users"], None))),
        serde_json::json!({"alice": {"age": 31, "tags": ["x"]}, "bob": {"city": "Oslo"}})
    );
    assert_eq!(
        json(&ok(&run(
            &dir,
            &["get", "users/alice", "--only", "age"],
            None
        ))),
        serde_json::json!({"age": 31})
    );
    for i in 0..5 {
        ok(&run(
            &dir,
            &["set", &format!("list/k{i}"), &i.to_string()],
            None,
        ));
    }
    let listed = ok(&run(
        &dir,
        &["list", "list", "--after", "k1", "--limit", "2"],
        None,
    ));
    let keys: Vec<String> = listed
        .lines()
        .map(|l| json(l)["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec!["k2", "k3"]);
    ok(&run(&dir, &["remove", "list"], None));
    assert_eq!(
        json(&ok(&run(&dir, &["get", "list"], None))),
        serde_json::Value::Null
    );
    let check = json(&ok(&run(&dir, &["check"], None)));
    assert_eq!(check["ok"], serde_json::json!(true));
    let stats = json(&ok(&run(&dir, &["stats"], None)));
    assert!(stats["records"].as_u64().unwrap() >= 5);
    // bad input: a clear error and a non-zero exit
    let bad = run(&dir, &["set", "x", "{not json"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("JSON"));
    // a foreign data file: the error names it
    std::fs::write(dir.join("data.db"), vec![b'z'; 20000]).unwrap();
    let foreign = run(&dir, &["check"], None);
    assert!(!foreign.status.success());
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("data.db"));
    std::fs::remove_dir_all(&dir).unwrap();
}
