//! testssl (Debian's `testssl.sh`) against the real binary's https listener: any HIGH or
//! CRITICAL finding fails. Loopback only: the target is an IP address and DNS is off.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use bascule_tests::tls::{https_two_slots, TestCert};
use bascule_tests::wait_until;
use serde::Deserialize;

/// How long testssl may run before the test gives up on it (it takes about 100 s here).
const TESTSSL_LIMIT: Duration = Duration::from_secs(180);

/// One entry of testssl's flat JSON output.
#[derive(Debug, Deserialize)]
struct Finding {
    id: String,
    severity: String,
    finding: String,
}

fn testssl_installed() -> bool {
    Command::new("testssl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn testssl_finds_nothing_high_or_critical() {
    if !testssl_installed() {
        eprintln!("skipped: testssl not found (Debian package testssl.sh; scripts/setup.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Issued by a CA testssl is told to trust, for 127.0.0.1: what is audited is the TLS
    // configuration, not a self-signed certificate's trust.
    let (cert, ca) = TestCert::issued(dir.path(), &["127.0.0.1", "localhost"]);
    let (_blue, _green, _proxy, https) = https_two_slots(&cert, "localhost", &[], None);

    let json = dir.path().join("testssl.json");
    // Protocols, cipher categories, forward secrecy, server preference, server defaults
    // (certificate), headers and vulnerabilities; no client simulation. `--fast` leaves out
    // the per-cipher sweeps; no DNS, no CRL or OCSP fetches (no `--phone-out`).
    let mut child = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--nodns",
            "none",
            "--warnings",
            "off",
        ])
        .args(["--fast", "--sneaky", "--connect-timeout", "10"])
        .args(["--openssl-timeout", "10", "--add-ca"])
        .arg(&ca)
        .arg("--jsonfile")
        .arg(&json)
        .args(["-p", "-s", "-f", "-P", "-S", "-h", "-U"])
        .arg(https.to_string())
        .stdout(std::fs::File::create(dir.path().join("testssl.txt")).unwrap())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run testssl");
    let mut exited = None;
    let finished = wait_until(TESTSSL_LIMIT, || {
        exited = child.try_wait().ok().flatten();
        exited.is_some()
    });
    if !finished {
        // testssl runs openssl children in its group: stop them all.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
        panic!("testssl ran longer than {TESTSSL_LIMIT:?}");
    }
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        let out = std::fs::read_to_string(dir.path().join("testssl.txt")).unwrap_or_default();
        panic!("testssl ({exited:?}) wrote no JSON ({e}):\n{out}")
    });
    let findings: Vec<Finding> = serde_json::from_str(&text).expect("testssl's JSON");
    assert!(
        findings.iter().any(|f| f.id == "TLS1_3"),
        "testssl did not get as far as the protocols: {findings:?}"
    );

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &findings {
        *counts.entry(f.severity.as_str()).or_default() += 1;
    }
    eprintln!("testssl summary: {counts:?}");
    for f in findings
        .iter()
        .filter(|f| !matches!(f.severity.as_str(), "OK" | "INFO" | "DEBUG"))
    {
        eprintln!("  {} {}: {}", f.severity, f.id, f.finding);
    }
    let bad: Vec<&Finding> = findings
        .iter()
        .filter(|f| matches!(f.severity.as_str(), "HIGH" | "CRITICAL"))
        .collect();
    assert!(bad.is_empty(), "testssl found: {bad:#?}");
}
