//! Decision tables on the wire: `leash_core::tables::Tables` to and from
//! `DecisionTables`, for the sensor and the proxy.

use std::net::IpAddr;

use leash_core::tables::{FileAction, HostTable, NetTable, PathTable, Tables, Verdict};

use crate::v1 as pb;

fn verdict(v: Verdict) -> pb::Verdict {
    pb::Verdict { allow: v.allow, reason: v.reason }
}

fn from_verdict(v: &pb::Verdict) -> Verdict {
    Verdict::new(v.allow, v.reason)
}

fn entry(path: &str, v: Verdict) -> pb::PathEntry {
    pb::PathEntry { path: path.to_owned(), verdict: Some(verdict(v)) }
}

/// A file action's wire name.
pub fn action_name(a: FileAction) -> &'static str {
    match a {
        FileAction::Open => "open",
        FileAction::Read => "read",
        FileAction::Write => "write",
        FileAction::Exec => "exec",
    }
}

fn action_of(name: &str) -> Option<FileAction> {
    FileAction::ALL.into_iter().find(|a| action_name(*a) == name)
}

fn full_length(ip: IpAddr) -> u32 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// The wire form of a generation's tables.
pub fn to_proto(t: &Tables, mode: &str) -> pb::DecisionTables {
    let files = t
        .files
        .iter()
        .map(|(a, p)| pb::PathTable {
            action: action_name(*a).to_owned(),
            exact: p.exact.iter().map(|(k, v)| entry(k, *v)).collect(),
            prefixes: p.prefixes.iter().map(|(k, v)| entry(k, *v)).collect(),
            default: p.default.map(verdict),
            path_patterns: p.path_patterns.clone(),
            names: p.names.clone(),
            evaluate_all: p.evaluate_all,
        })
        .collect();
    let net_entry = |addr: IpAddr, prefix: u32, port: u16, v: Verdict| pb::NetEntry {
        addr: addr.to_string(),
        prefix,
        port: u32::from(port),
        verdict: Some(verdict(v)),
    };
    let mut exact: Vec<pb::NetEntry> =
        t.net.exact_port.iter().map(|((a, p), v)| net_entry(*a, full_length(*a), *p, *v)).collect();
    exact.extend(t.net.exact.iter().map(|(a, v)| net_entry(*a, full_length(*a), 0, *v)));
    let net = pb::NetTable {
        exact,
        ranges: t.net.ranges.iter().map(|(a, p, v)| net_entry(*a, u32::from(*p), 0, *v)).collect(),
        default_v4: t.net.default_v4.map(verdict),
        default_v6: t.net.default_v6.map(verdict),
        evaluate_all: t.net.evaluate_all,
        evaluate_requests: t.net.evaluate_requests,
    };
    let mut host_exact: Vec<pb::PathEntry> =
        t.hosts.exact_port.iter().map(|((n, p), v)| entry(&format!("{n}:{p}"), *v)).collect();
    host_exact.extend(t.hosts.exact.iter().map(|(n, v)| entry(n, *v)));
    let hosts = pb::HostTable {
        exact: host_exact,
        wildcards: t.hosts.wildcards.iter().map(|(s, v)| entry(&format!("*.{s}"), *v)).collect(),
        default: t.hosts.default.map(verdict),
        evaluate_all: t.hosts.evaluate_all,
        evaluate: t
            .hosts
            .evaluate
            .iter()
            .map(|(n, p)| p.map_or_else(|| n.clone(), |p| format!("{n}:{p}")))
            .chain(t.hosts.evaluate_below.iter().map(|s| format!("*.{s}")))
            .collect(),
    };
    pb::DecisionTables {
        generation: t.generation,
        files,
        net: Some(net),
        hosts: Some(hosts),
        reasons: t.reasons.iter().map(|ids| pb::ReasonSet { ids: ids.clone() }).collect(),
        mode: mode.to_owned(),
        rewrites: t
            .rewrites
            .iter()
            .map(|r| pb::Rewrite {
                host: r.host.clone(),
                header: r.header.clone(),
                value: r.value.clone(),
                reason: r.reason,
            })
            .collect(),
    }
}

/// Tables and their mode off the wire; an unknown mode is enforce (the safe side).
pub fn decode(t: &pb::DecisionTables) -> Result<(Tables, leash_core::Mode), String> {
    let mode = leash_core::Mode::from_name(&t.mode).unwrap_or(leash_core::Mode::Enforce);
    Ok((from_proto(t).map_err(|e| format!("malformed tables: {e}"))?, mode))
}

/// Reads tables off the wire; names what is malformed.
pub fn from_proto(p: &pb::DecisionTables) -> Result<Tables, String> {
    let v =
        |e: &Option<pb::Verdict>, what: &str| e.as_ref().map(from_verdict).ok_or_else(|| format!("{what}: no verdict"));
    let mut t = Tables { generation: p.generation, ..Default::default() };
    for f in &p.files {
        let action = action_of(&f.action).ok_or_else(|| format!("unknown file action {:?}", f.action))?;
        let mut table = PathTable {
            default: f.default.as_ref().map(from_verdict),
            path_patterns: f.path_patterns.clone(),
            names: f.names.clone(),
            evaluate_all: f.evaluate_all,
            ..Default::default()
        };
        for e in &f.exact {
            table.exact.insert(e.path.clone(), v(&e.verdict, &e.path)?);
        }
        for e in &f.prefixes {
            table.prefixes.insert(e.path.clone(), v(&e.verdict, &e.path)?);
        }
        t.files.insert(action, table);
    }
    if let Some(n) = &p.net {
        let mut net = NetTable {
            default_v4: n.default_v4.as_ref().map(from_verdict),
            default_v6: n.default_v6.as_ref().map(from_verdict),
            evaluate_all: n.evaluate_all,
            evaluate_requests: n.evaluate_requests,
            ..Default::default()
        };
        for e in &n.exact {
            let ip: IpAddr = e.addr.parse().map_err(|_| format!("bad address {:?}", e.addr))?;
            let port = u16::try_from(e.port).map_err(|_| format!("bad port {}", e.port))?;
            let verdict = v(&e.verdict, &e.addr)?;
            if port == 0 {
                net.exact.insert(ip, verdict);
            } else {
                net.exact_port.insert((ip, port), verdict);
            }
        }
        for e in &n.ranges {
            let ip: IpAddr = e.addr.parse().map_err(|_| format!("bad address {:?}", e.addr))?;
            let prefix = u8::try_from(e.prefix).ok().filter(|p| u32::from(*p) <= full_length(ip));
            let prefix = prefix.ok_or_else(|| format!("bad prefix /{} for {}", e.prefix, e.addr))?;
            net.ranges.push((ip, prefix, v(&e.verdict, &e.addr)?));
        }
        t.net = net;
    }
    if let Some(h) = &p.hosts {
        let mut hosts = HostTable {
            default: h.default.as_ref().map(from_verdict),
            evaluate_all: h.evaluate_all,
            ..Default::default()
        };
        for e in &h.exact {
            let verdict = v(&e.verdict, &e.path)?;
            match e.path.rsplit_once(':').and_then(|(n, p)| Some((n, p.parse::<u16>().ok()?))) {
                Some((name, port)) => {
                    hosts.exact_port.insert((name.to_owned(), port), verdict);
                }
                None => {
                    hosts.exact.insert(e.path.clone(), verdict);
                }
            }
        }
        for e in &h.wildcards {
            let suffix = e.path.strip_prefix("*.").ok_or_else(|| format!("bad wildcard {:?}", e.path))?;
            hosts.wildcards.insert(suffix.to_owned(), v(&e.verdict, &e.path)?);
        }
        for e in &h.evaluate {
            match (e.rsplit_once(':'), e.strip_prefix("*.")) {
                (Some((name, port)), _) => {
                    let port = port.parse::<u16>().map_err(|_| format!("bad port in {e:?}"))?;
                    hosts.evaluate.insert((name.to_owned(), Some(port)));
                }
                (None, Some(suffix)) => {
                    hosts.evaluate_below.insert(suffix.to_owned());
                }
                (None, None) => {
                    hosts.evaluate.insert((e.clone(), None));
                }
            }
        }
        t.hosts = hosts;
    }
    t.reasons = p.reasons.iter().map(|r| r.ids.clone()).collect();
    t.rewrites = p
        .rewrites
        .iter()
        .map(|r| leash_core::tables::Rewrite {
            host: r.host.clone(),
            header: r.header.clone(),
            value: r.value.clone(),
            reason: r.reason,
        })
        .collect();
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = Verdict::new;
        let mut t = Tables { generation: 9, ..Default::default() };
        let mut p = PathTable { default: Some(v(true, 0)), evaluate_all: false, ..Default::default() };
        p.exact.insert("/a/x".into(), v(false, 1));
        p.prefixes.insert("/a/".into(), v(true, 2));
        p.path_patterns.push("*/.git/*".into());
        p.names.push(".envrc".into());
        t.files.insert(FileAction::Write, p);
        t.net.exact_port.insert(("10.0.0.1".parse().unwrap(), 443), v(true, 1));
        t.net.exact.insert("2001:db8::1".parse().unwrap(), v(false, 2));
        t.net.ranges.push(("10.0.0.0".parse().unwrap(), 8, v(true, 0)));
        t.net.default_v4 = Some(v(false, 0));
        t.hosts.exact_port.insert(("api.example.com".into(), 443), v(true, 1));
        t.hosts.exact.insert("example.com".into(), v(false, 2));
        t.hosts.wildcards.insert("example.com".into(), v(true, 0));
        t.hosts.default = Some(v(false, 0));
        t.hosts.evaluate.insert(("api.github.com".into(), None));
        t.hosts.evaluate.insert(("git.example.com".into(), Some(443)));
        t.hosts.evaluate.insert(("*.example.com".into(), Some(0)));
        t.hosts.evaluate_below.insert("corp.example".into());
        t.net.evaluate_requests = true;
        t.reasons = vec![vec![], vec!["a".into()], vec!["b".into(), "c".into()]];
        let wire = to_proto(&t, "shadow");
        assert_eq!(wire.mode, "shadow");
        assert_eq!(from_proto(&wire).unwrap(), t);
    }

    #[test]
    fn malformed_tables_are_named() {
        let bad = pb::DecisionTables {
            files: vec![pb::PathTable { action: "fly".into(), ..Default::default() }],
            ..Default::default()
        };
        assert!(from_proto(&bad).unwrap_err().contains("fly"));
    }
}
