//! leash-entry in a real container: trust installation, user preparation,
//! refusal to write through a bind mount.

use std::process::Command;

use leash_testkit::{TEST_IMAGE, require_docker, static_entry};

/// A throwaway CA certificate, minted with openssl.
fn mint_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let cert = dir.join("ca.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=leash test CA", "-keyout"])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(status.status.success(), "openssl: {status:?}");
    cert
}

fn docker_run(extra: &[String], args: &[&str]) -> std::process::Output {
    let entry = static_entry();
    Command::new("docker")
        .args(["run", "--rm", "--entrypoint", "/leash/leash-entry", "-v"])
        .arg(format!("{}:/leash/leash-entry:ro", entry.display()))
        .args(extra)
        .arg(TEST_IMAGE)
        .args(args)
        .output()
        .expect("docker run")
}

#[test]
fn the_session_ca_is_trusted_by_the_system_store_and_the_usual_variables() {
    if !require_docker("the_session_ca_is_trusted_by_the_system_store_and_the_usual_variables") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = mint_ca(tmp.path());
    let mount = vec!["-v".to_owned(), format!("{}:/leash/session/ca.pem:ro", ca.display())];
    let script = "cat /etc/ssl/certs/ca-certificates.crt; echo $SSL_CERT_FILE $NODE_EXTRA_CA_CERTS $REQUESTS_CA_BUNDLE $CURL_CA_BUNDLE; id -u; echo $HOME";
    let out = docker_run(&mount, &["--ca", "/leash/session/ca.pem", "--user", "1234:1234", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pem = std::fs::read_to_string(&ca).unwrap();
    assert!(stdout.contains(pem.trim()), "{stdout}");
    let b = "/etc/ssl/certs/ca-certificates.crt";
    assert!(stdout.contains(&format!("{b} {b} {b} {b}\n1234\n/home/leash\n")), "{stdout}");

    // The store's directory bind-mounted from the host: refused, nothing written.
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let mut mounts = mount.clone();
    mounts.extend(["-v".to_owned(), format!("{}:/etc/ssl/certs", certs.display())]);
    let out = docker_run(&mounts, &["--ca", "/leash/session/ca.pem", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a bind mount; refusing to write through it"), "{out:?}");
    assert_eq!(std::fs::read_dir(&certs).unwrap().count(), 0);

    // Not a certificate: refused.
    let out = docker_run(&mount, &["--ca", "/etc/passwd", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no PEM certificate"), "{out:?}");
}

#[test]
fn without_a_release_channel_nothing_runs() {
    if !require_docker("without_a_release_channel_nothing_runs") {
        return;
    }
    let out = docker_run(&[], &["--release", "/leash/session/release.sock", "--", "sh", "-c", "echo ran"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach leashd's release channel"), "{out:?}");
    assert!(out.stdout.is_empty(), "the command must not run: {out:?}");
}
