//! What leash-entry prepares before the command may run.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::release;

/// Where the combined bundle is written (the Debian/Alpine system store).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Other places images keep their roots, read when the system store is absent.
const OTHER_BUNDLES: [&str; 3] =
    ["/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem", "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"];

/// Writes the system roots plus the session CA as the system bundle and
/// returns the variables that point TLS clients at it.
pub fn install_trust(ca_path: &str) -> io::Result<Vec<(String, String)>> {
    let ca = fs::read_to_string(ca_path)?;
    if !ca.contains("-----BEGIN CERTIFICATE-----") {
        return Err(io::Error::other(format!("{ca_path} holds no PEM certificate")));
    }
    let roots = std::iter::once(SYSTEM_BUNDLE)
        .chain(OTHER_BUNDLES)
        .find_map(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
    let bundle = Path::new(SYSTEM_BUNDLE);
    let dir = bundle.parent().expect("bundle has a parent");
    fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    if is_bind_mounted(dir)? {
        return Err(io::Error::other(format!("{} is a bind mount; refusing to write through it", dir.display())));
    }
    let mut combined = roots;
    if !combined.is_empty() && !combined.ends_with('\n') {
        combined.push('\n');
    }
    if !combined.contains(ca.trim()) {
        combined.push_str(ca.trim());
        combined.push('\n');
    }
    // Replace, never write in place: the old file may be a link into the image.
    let tmp = dir.join(".leash-bundle.tmp");
    fs::write(&tmp, combined)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, bundle)?;
    Ok(["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]
        .iter()
        .map(|k| (k.to_string(), SYSTEM_BUNDLE.to_string()))
        .collect())
}

/// True when `dir` is itself a mount point.
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy();
    Ok(mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).any(|mount_point| mount_point == dir))
}

/// True when `dir` (or the mount holding it) is a mount point other than
/// the container's root, i.e. something the host bind-mounted.
fn is_bind_mounted(dir: &Path) -> io::Result<bool> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.to_string_lossy();
    Ok(mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount_point| mount_point != "/" && (dir == mount_point || dir.starts_with(&format!("{mount_point}/")))))
}

/// Adds passwd and group entries for `uid`/`gid` when missing and creates
/// HOME owned by them.
pub fn prepare_user(uid: u32, gid: u32, name: &str, home: &str) -> io::Result<()> {
    fs::create_dir_all("/etc")?;
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    if !passwd.lines().any(|l| l.split(':').nth(2) == Some(&uid.to_string())) {
        // A name already taken by another uid gets the uid appended.
        let taken = passwd.lines().any(|l| l.split(':').next() == Some(name));
        let name = if taken { format!("{name}{uid}") } else { name.to_owned() };
        append_line("/etc/passwd", &passwd, &format!("{name}:x:{uid}:{gid}::{home}:/bin/sh"))?;
    }
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    if !group.lines().any(|l| l.split(':').nth(2) == Some(&gid.to_string())) {
        let taken = group.lines().any(|l| l.split(':').next() == Some(name));
        let gname = if taken { format!("{name}{gid}") } else { name.to_owned() };
        append_line("/etc/group", &group, &format!("{gname}:x:{gid}:"))?;
    }
    let chown = |p: &str| {
        nix::unistd::chown(p, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(io::Error::from)
    };
    if !Path::new(home).exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(home)?;
        chown(home)?;
    } else if uid != 0 {
        // The engine creates the parents of bind targets (the project under
        // HOME, the agent's dirs) as root: hand HOME itself to the user,
        // unless it is a mount from the host, which stays as it is.
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(home)?;
        if meta.uid() == 0 && !is_mount_point(Path::new(home))? {
            chown(home)?;
        }
    }
    Ok(())
}

fn append_line(path: &str, current: &str, line: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    if !current.is_empty() && !current.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    writeln!(f, "{line}")
}

/// Blocks until leashd releases the session (`go`) or refuses it.
pub fn await_release(socket: &str) -> Result<(), String> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| format!("cannot reach leashd's release channel {socket}: {e}"))?;
    let mut answer = Vec::new();
    (&mut s)
        .take(release::MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| format!("release channel {socket}: {e}"))?;
    drop(s);
    release::decide(&answer)
}
