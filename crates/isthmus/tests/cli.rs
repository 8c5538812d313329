//! The binary end to end: the quickstart on a small forest, then the operator tools on its
//! database; and clear errors for bad input.
#![allow(clippy::expect_used, reason = "test code")]

use std::process::Command;

fn isthmus(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_isthmus")).args(args).output().expect("run isthmus");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn quickstart_then_operator_tools() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("qs.db");
    let db = db.to_str().expect("utf-8 path");
    let (ok, out, err) = isthmus(&["quickstart", "--db", db, "--users", "40", "--groups", "4"]);
    assert!(ok, "quickstart failed:\n{out}\n{err}");
    assert!(out.contains("the cloud directory now holds 94 objects"), "40 users + 4 groups + 50 contacts:\n{out}");
    assert!(out.contains("jobTitle                       Chief Demo Officer"), "the delta reached the cloud:\n{out}");
    let summary = out.split("== summary").nth(1).unwrap_or_else(|| panic!("a final summary:\n{out}"));
    assert!(summary.contains("cloud       94 objects in the tenant"), "{summary}");
    assert!(summary.contains(" 0 object errors, 0 stopped"), "{summary}");
    assert!(!err.contains("objects  "), "no progress bars when standard error is not a terminal:\n{err}");
    let (ok, _, err) = isthmus(&["quickstart", "--db", db]);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");

    let (ok, out, _) = isthmus(&["history", "--db", db, "--limit", "100"]);
    assert!(ok);
    assert!(out.lines().filter(|line| line.contains("full-import")).count() == 2, "{out}");
    assert!(out.lines().filter(|line| line.contains(" export ")).all(|line| line.contains("success")), "{out}");

    let (ok, out, _) = isthmus(&["plan", "--db", db]);
    assert!(ok);
    assert!(out.ends_with("Plan: 0 to add, 0 to change, 0 to delete.\n"), "everything was exported:\n{out}");

    let (ok, out, _) = isthmus(&["cs", "search", "--db", db, "--connector", "tenant", "--limit", "5"]);
    assert!(ok);
    assert!(out.contains("joined to mv:") && out.ends_with("5 object(s)\n"), "{out}");
    // Cloud objects' DNs are ids: each line also names the object (its UPN, mail or name).
    let first = out.lines().next().unwrap_or_default();
    assert!(first.contains("objectId=") && first.contains("@") && first.contains('"'), "named, not only an id: {first}");

    let (ok, out, err) = isthmus(&[
        "preview",
        "--db",
        db,
        "--connector",
        "corp.example.test",
        "--dn",
        "CN=nberg0,OU=Finance,OU=Isthmus People,DC=corp,DC=example,DC=test",
        "--default-rules",
        "corp.example.test:tenant",
        "--param",
        "Domain.FQDN=corp.example.test",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("[102] In from AD - User AccountEnabled (corp.example.test)"), "rules in scope:\n{out}");
    assert!(out.contains("title                        Chief Demo Officer"), "computed values:\n{out}");
    assert!(out.contains("stays as it is") && out.contains("connector spaces:\n  (no change)"), "already in sync:\n{out}");
    let (ok, _, err) = isthmus(&[
        "preview",
        "--db",
        db,
        "--connector",
        "corp.example.test",
        "--dn",
        "CN=nobody",
        "--default-rules",
        "corp.example.test:tenant",
    ]);
    assert!(!ok);
    assert!(err.contains("\"corp.example.test\" has no object CN=nobody"), "{err}");

    let (ok, out, _) = isthmus(&["mv", "show", "--db", db, "1"]);
    assert!(ok);
    assert!(
        out.contains("sourceAnchor") && out.contains("In from AD - User AccountEnabled (corp.example.test) [102]"),
        "lineage shown:\n{out}"
    );
    assert!(out.contains("corp.example.test: cs:") && out.contains("tenant: cs:"), "both connectors listed:\n{out}");
}

#[test]
fn operator_tools_refuse_a_missing_database() {
    let (ok, _, err) = isthmus(&["history", "--db", "/nonexistent/isthmus.db"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/isthmus.db does not exist"), "{err}");
    // An operator's mistake prints its message, never a stack backtrace, even when asked for
    // backtraces (they are for the program's bugs).
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["history", "--config", "/nonexistent/isthmus.toml"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run isthmus");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && err.starts_with("Error: read /nonexistent/isthmus.toml"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace") && !err.contains("main.rs"), "{err}");
}

#[test]
fn check_rules_names_the_problems() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, sync_rules_text()).expect("write");
    let (ok, out, err) = isthmus(&["check-rules", file.to_str().expect("utf-8")]);
    assert!(!ok, "{out}");
    assert!(err.contains("rule \"Bad\": flow to mail: expression error at 1:6: unknown function Lcase; did you mean LCase?"), "{err}");
    std::fs::write(&file, sync_rules_text().replace("Lcase", "LCase")).expect("write");
    let (ok, out, _) = isthmus(&["check-rules", file.to_str().expect("utf-8")]);
    assert!(ok);
    assert!(out.contains("1 rules, all checked"), "{out}");
}

fn sync_rules_text() -> String {
    "[[rule]]\nname = \"Bad\"\ndirection = \"inbound\"\nconnector = \"ad\"\nsource_type = \"user\"\ntarget_type = \"person\"\nlink_type = \"join\"\nprecedence = 1\n[[rule.flow]]\ntarget = \"mail\"\nexpression = 'Trim(Lcase([mail]))'\n".into()
}

#[test]
fn check_rules_refuses_an_expression_too_deep_with_the_rule_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rules.toml");
    let chain = vec!["[mail]"; 20_001].join(" & ");
    std::fs::write(&file, sync_rules_text().replace("Trim(Lcase([mail]))", &chain)).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["check-rules", file.to_str().expect("utf-8")])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "a clear error, not a crash (134): {err}");
    assert!(err.contains("rule \"Bad\"") && err.contains("nests deeper"), "{err}");
}

/// CPU seconds a process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// `tenant serve` out of file descriptors (a low `ulimit -n` and more connections than it
/// allows): it pauses accepting instead of spinning on the error, and serves again once the
/// connections are gone.
#[test]
fn tenant_serve_out_of_file_descriptors_does_not_spin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let state = dir.path().join("tenant");
    let command = format!(
        "ulimit -n 64 && exec '{}' tenant serve --state '{}' --listen 127.0.0.1:{port}",
        env!("CARGO_BIN_EXE_isthmus"),
        state.display()
    );
    let mut server = Command::new("sh")
        .args(["-c", &command])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tenant serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "tenant serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let bootstrap = std::fs::read_to_string(state.join("admin-app.txt")).expect("admin-app.txt");
    let public = bootstrap.lines().find_map(|line| line.strip_prefix("public_client_id = ")).expect("a public client for user sign-ins");
    assert_eq!(public.len(), 36, "{bootstrap}");
    // Far more connections than descriptors: the kernel queues them, accept() fails with EMFILE.
    let held: Vec<std::net::TcpStream> = (0..150).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let before = cpu_seconds(server.id());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used = cpu_seconds(server.id()) - before;
    eprintln!("tenant serve at the descriptor limit: {used:.2} s of CPU in 3 s");
    assert!(used < 1.0, "a spinning accept loop burns the core ({used:.2} s of CPU in 3 s)");
    drop(held);
    let mut served = false;
    for _ in 0..150 {
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            // A TLS ClientHello is not needed to see that the server took the connection: it
            // answers garbage by closing it, which needs a descriptor.
            let _ = tcp.write_all(b"not tls\r\n\r\n");
            let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut buffer = [0u8; 16];
            if tcp.read(&mut buffer).is_ok() {
                served = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(served, "the server takes connections again once descriptors are free");
}
