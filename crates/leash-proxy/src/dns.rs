//! DNS messages, as far as the relay needs them: the question a query asks
//! and the addresses (with their TTLs) an answer gives for it, following
//! CNAME chains and name compression. Malformed input is an error, never a
//! panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Compression pointers followed per name before giving up (loops).
const MAX_POINTERS: usize = 32;

/// What an answer says about the name asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The name asked (lower case, no trailing dot).
    pub name: String,
    /// Its addresses, each with the TTL (seconds) of its record.
    pub addresses: Vec<(IpAddr, u32)>,
}

fn u16_at(m: &[u8], at: usize) -> Result<u16, String> {
    m.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "truncated".to_owned())
}

fn u32_at(m: &[u8], at: usize) -> Result<u32, String> {
    m.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or_else(|| "truncated".to_owned())
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset
/// just after it in the message.
fn name_at(m: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *m.get(at).ok_or("truncated name")? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                let after = end.unwrap_or(at + 1);
                return Ok((labels.join(".").to_ascii_lowercase(), after));
            }
            0x00 => {
                let label = m.get(at + 1..at + 1 + len).ok_or("truncated label")?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                if labels.iter().map(|l| l.len() + 1).sum::<usize>() > 255 {
                    return Err("name longer than 255 bytes".into());
                }
                at += 1 + len;
            }
            0xc0 => {
                jumps += 1;
                if jumps > MAX_POINTERS {
                    return Err("compression loop".into());
                }
                let target = (u16_at(m, at)? & 0x3fff) as usize;
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err("unknown label type".into()),
        }
    }
}

/// The name a query asks (its first question).
pub fn question(m: &[u8]) -> Result<String, String> {
    if u16_at(m, 4)? == 0 {
        return Err("no question".into());
    }
    Ok(name_at(m, 12)?.0)
}

/// A query's question, as far as the relay decides on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The name asked (lower case, no trailing dot), as written: a PTR
    /// query's name is its `in-addr.arpa` name.
    pub name: String,
    /// Its type (1 for A, 28 for AAAA, …).
    pub qtype: u16,
    /// Where its question ends (after the type and class).
    end: usize,
}

/// The only question of a query. A response, a message without exactly one
/// question, or a question whose name is compressed (nothing precedes it to
/// point at) is an error: the relay neither forwards nor answers it.
pub fn query(m: &[u8]) -> Result<Query, String> {
    let flags = u16_at(m, 2)?;
    if flags & 0x8000 != 0 {
        return Err("a response, not a query".into());
    }
    if u16_at(m, 4)? != 1 {
        return Err("not exactly one question".into());
    }
    let mut at = 12;
    loop {
        let len = *m.get(at).ok_or("truncated name")? as usize;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err("a compressed or unknown label in the question".into());
        }
        at += 1 + len;
        if at - 12 > 255 {
            return Err("name longer than 255 bytes".into());
        }
    }
    let (name, after) = name_at(m, 12)?;
    let qtype = u16_at(m, after)?;
    u16_at(m, after + 2)?;
    Ok(Query { name, qtype, end: after + 4 })
}

/// The rcode of a refusal: REFUSED.
pub const RCODE_REFUSED: u8 = 5;
/// The rcode of a refusal: NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;

/// The answer to a query the relay refuses itself: the query's id and
/// question (its bytes, so a resolver's random letter case survives), QR and
/// RA set, the opcode, RD and CD bits copied, `rcode`, and no records (any
/// EDNS record of the query is not echoed). `None` for what [`query`]
/// refuses to read.
pub fn refusal(m: &[u8], rcode: u8) -> Option<Vec<u8>> {
    let q = query(m).ok()?;
    let mut out = Vec::with_capacity(q.end);
    out.extend_from_slice(&m[..2]);
    out.push(0x80 | (m[2] & 0x79));
    out.push(0x80 | (m[3] & 0x10) | (rcode & 0x0f));
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&m[12..q.end]);
    Some(out)
}

/// The name of a query type, as tools print it (`TYPE<n>` for the rest).
pub fn type_name(t: u16) -> String {
    let known = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        257 => "CAA",
        _ => return format!("TYPE{t}"),
    };
    known.to_owned()
}

/// A label longer than this is flagged.
pub const SUSPICIOUS_LABEL: usize = 40;
/// A name longer than this (dots included) is flagged.
pub const SUSPICIOUS_NAME: usize = 100;
/// A run of at least this many characters between hyphens (or underscores)
/// is judged by its entropy…
pub const ENTROPY_RUN: usize = 16;
/// …flagged above this (bits per character) when it mixes letters and
/// digits and is not hexadecimal…
pub const ENTROPY_MIXED: f64 = 3.5;
/// …and above this whatever it holds.
pub const ENTROPY_ANY: f64 = 4.0;

/// Shannon entropy, in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|c| **c > 0).map(|c| *c as f64 / n).map(|p| -p * p.log2()).sum()
}

/// Why a name looks like data rather than a name, if it does: a label
/// longer than [`SUSPICIOUS_LABEL`], a name longer than [`SUSPICIOUS_NAME`],
/// or a run of [`ENTROPY_RUN`] or more characters between hyphens whose
/// entropy is above [`ENTROPY_MIXED`] (letters mixed with digits, not all
/// hexadecimal: base32, base64) or [`ENTROPY_ANY`]. Words joined by hyphens
/// (`prod-registry-k8s-io-us-east-1`), hexadecimal hashes and account ids,
/// and short CDN ids (`d1a2b3c4.cloudfront.net`) pass.
pub fn suspicious(name: &str) -> Option<String> {
    if name.len() > SUSPICIOUS_NAME {
        return Some(format!("a name of {} characters (over {SUSPICIOUS_NAME})", name.len()));
    }
    for label in name.split('.') {
        if label.len() > SUSPICIOUS_LABEL {
            return Some(format!("a label of {} characters (over {SUSPICIOUS_LABEL}): {label}", label.len()));
        }
        for run in label.split(['-', '_']).filter(|r| r.len() >= ENTROPY_RUN) {
            let h = entropy(run);
            let digits = run.bytes().any(|b| b.is_ascii_digit());
            let letters = run.bytes().any(|b| b.is_ascii_alphabetic());
            let hex = run.bytes().all(|b| b.is_ascii_hexdigit());
            if h > ENTROPY_ANY || (h > ENTROPY_MIXED && digits && letters && !hex) {
                return Some(format!("a label of high entropy ({h:.2} bits per character): {label}"));
            }
        }
    }
    None
}

/// The addresses an answer gives for its question's name, through CNAMEs.
pub fn answer(m: &[u8]) -> Result<Answer, String> {
    let (qd, an) = (u16_at(m, 4)?, u16_at(m, 6)?);
    if qd == 0 {
        return Err("no question".into());
    }
    let (name, mut at) = name_at(m, 12)?;
    at += 4;
    for _ in 1..qd {
        at = name_at(m, at)?.1 + 4;
    }
    let mut records = Vec::new();
    for _ in 0..an {
        let (owner, after) = name_at(m, at)?;
        let (kind, class, ttl, len) =
            (u16_at(m, after)?, u16_at(m, after + 2)?, u32_at(m, after + 4)?, u16_at(m, after + 8)?);
        let data_at = after + 10;
        let data = m.get(data_at..data_at + len as usize).ok_or("truncated record")?;
        if class == CLASS_IN {
            match kind {
                TYPE_A if data.len() == 4 => records.push((
                    owner,
                    Some(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]))),
                    ttl,
                    None,
                )),
                TYPE_AAAA if data.len() == 16 => {
                    let octets: [u8; 16] = data.try_into().map_err(|_| "bad AAAA")?;
                    records.push((owner, Some(IpAddr::V6(Ipv6Addr::from(octets))), ttl, None));
                }
                TYPE_CNAME => records.push((owner, None, ttl, Some(name_at(m, data_at)?.0))),
                _ => {}
            }
        }
        at = data_at + len as usize;
    }
    // The names the question leads to (itself and its CNAME targets).
    let mut names = vec![name.clone()];
    while let Some(next) = records
        .iter()
        .find(|(owner, _, _, target)| target.is_some() && names.last() == Some(owner))
        .and_then(|r| r.3.clone())
    {
        if names.contains(&next) || names.len() > 16 {
            break;
        }
        names.push(next);
    }
    let addresses = records
        .iter()
        .filter(|(owner, ip, _, _)| ip.is_some() && names.contains(owner))
        .filter_map(|(_, ip, ttl, _)| Some(((*ip)?, *ttl)))
        .collect();
    Ok(Answer { name, addresses })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for l in n.split('.') {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
        out
    }

    /// A response to `q` with a CNAME to `cdn.example.net` (compressed
    /// owner), then an A and an AAAA for it, and an unrelated A.
    fn response() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 4, 0, 0, 0, 0];
        m.extend(name("API.example.com"));
        m.extend([0, 1, 0, 1]);
        // CNAME: owner = pointer to the question (offset 12).
        m.extend([0xc0, 12, 0, 5, 0, 1, 0, 0, 1, 44]);
        let target = name("cdn.example.net");
        m.extend((target.len() as u16).to_be_bytes());
        let target_at = m.len();
        m.extend(&target);
        m.extend([0xc0, target_at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 93, 184, 216, 34]);
        m.extend([0xc0, target_at as u8, 0, 28, 0, 1, 0, 0, 0, 30, 0, 16]);
        m.extend(Ipv6Addr::new(0x2606, 0x2800, 0x220, 1, 0, 0, 0, 1).octets());
        m.extend(name("other.org"));
        m.extend([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
        m
    }

    #[test]
    fn answers_follow_cnames_and_compression() {
        let a = answer(&response()).unwrap();
        assert_eq!(a.name, "api.example.com");
        assert_eq!(
            a.addresses,
            vec![("93.184.216.34".parse().unwrap(), 60), ("2606:2800:220:1::1".parse().unwrap(), 30),]
        );
        assert_eq!(question(&response()).unwrap(), "api.example.com");
    }

    /// A query for `n` of type `t`: id 0xbeef, RD and CD set, with an EDNS
    /// OPT record.
    fn query_for(n: &str, t: u16) -> Vec<u8> {
        let mut m = vec![0xbe, 0xef, 0x01, 0x10, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend(name(n));
        m.extend(t.to_be_bytes());
        m.extend([0, 1]);
        m.extend([0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[test]
    fn queries_are_read_and_refused_with_their_question() {
        let q = query_for("Exfil.Attacker.Example", 28);
        let read = query(&q).unwrap();
        assert_eq!((read.name.as_str(), read.qtype), ("exfil.attacker.example", 28));
        for rcode in [RCODE_REFUSED, RCODE_NXDOMAIN] {
            let r = refusal(&q, rcode).unwrap();
            assert_eq!(&r[..2], &[0xbe, 0xef], "the query's id");
            assert_eq!(r[2], 0x81, "QR, opcode 0, RD copied");
            assert_eq!(r[3], 0x90 | rcode, "RA, CD copied, the rcode");
            assert_eq!(&r[4..12], &[0, 1, 0, 0, 0, 0, 0, 0], "one question, no records");
            let asked = &q[12..12 + name("Exfil.Attacker.Example").len() + 4];
            assert_eq!(&r[12..], asked, "the question's bytes, letter case kept");
            assert_eq!(question(&r).unwrap(), "exfil.attacker.example");
            assert_eq!(answer(&r).unwrap().addresses, vec![]);
        }
        // RD clear stays clear; another opcode is copied.
        let mut q = query_for("a.example", 1);
        q[2] = 0x00;
        assert_eq!(refusal(&q, RCODE_REFUSED).unwrap()[2], 0x80);
        q[2] = 0x28;
        assert_eq!(refusal(&q, RCODE_REFUSED).unwrap()[2], 0xa8);
        // The root and a PTR name, as written.
        let root = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        assert_eq!(query(&root).map(|q| (q.name, q.qtype)), Ok((String::new(), 2)));
        assert_eq!(query(&query_for("4.3.2.1.in-addr.arpa", 12)).unwrap().name, "4.3.2.1.in-addr.arpa");
        assert_eq!(type_name(12), "PTR");
        assert_eq!(type_name(4242), "TYPE4242");
    }

    #[test]
    fn what_is_not_one_plain_question_is_never_answered() {
        let q = query_for("a.example", 1);
        // Every truncation, and every single byte changed, parses or fails
        // without panicking.
        for cut in 0..q.len() {
            let _ = refusal(&q[..cut], RCODE_REFUSED);
        }
        for at in 0..q.len() {
            for b in [0x00, 0x3f, 0x40, 0xc0, 0xff] {
                let mut m = q.clone();
                m[at] = b;
                let _ = refusal(&m, RCODE_NXDOMAIN);
            }
        }
        for cut in [0, 5, 11, 12, 14, 23, 25] {
            assert!(refusal(&q[..cut], RCODE_REFUSED).is_none(), "cut at {cut}");
        }
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(refusal(&response, RCODE_REFUSED).is_none(), "a response");
        let mut two = q.clone();
        two[5] = 2;
        assert!(refusal(&two, RCODE_REFUSED).is_none(), "two questions");
        let mut none = q.clone();
        none[5] = 0;
        assert!(refusal(&none, RCODE_REFUSED).is_none(), "no question");
        let mut pointer = q[..12].to_vec();
        pointer.extend([0xc0, 0, 0, 1, 0, 1]);
        assert!(refusal(&pointer, RCODE_REFUSED).is_none(), "a compressed question");
        let mut long = q[..12].to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend([b'a'; 63]);
        }
        long.extend([0, 0, 1, 0, 1]);
        assert!(refusal(&long, RCODE_REFUSED).is_none(), "a name over 255 bytes");
    }

    #[test]
    fn data_in_labels_is_flagged_and_names_are_not() {
        let blob = "onswg4tfoqwwiylumefa"; // `echo secret-data | base32`
        assert!(suspicious(&format!("{blob}.attacker.example")).unwrap().contains("entropy"));
        let long = "mzxw6ytboi2dkmbwgq3tqojqgezdgnbvgy3tqojqgezdgnbv";
        assert!(suspicious(&format!("{long}.attacker.example")).unwrap().contains("48 characters"));
        let split =
            ["mzxw6ytboi2dkmbw", "gq3tqojqgezdgnbv", "gy3tqojqgezdgnbv", "mzxw6ytboi2dkmbw", "gq3tqojqgezdgnbv"];
        let many = format!("{}.{}.x.example", split.join("."), split.join("."));
        assert!(suspicious(&many).unwrap().contains("characters (over 100)"), "{many}");
        assert!(suspicious("nbswy3dpeb3w64tmmq2a.example").is_some());
        assert!(suspicious("vgvzdcbkyxrhig1vcmugzgf0yq.example").is_some(), "base64, lower case");
        for ok in [
            "www.example.com",
            "api.anthropic.com",
            "objects-origin.githubusercontent.com",
            "release-assets.githubusercontent.com",
            "d1a2b3c4.cloudfront.net",
            "d111111abcdef8.cloudfront.net",
            "e3b0c44298fc1c149afbf4c8996fb924.r2.cloudflarestorage.com",
            "prod-registry-k8s-io-us-east-1.s3.dualstack.us-east-1.amazonaws.com",
            "github-production-release-asset-2e65be.s3.amazonaws.com",
            "my-load-balancer-1234567890.us-west-2.elb.amazonaws.com",
            "r4---sn-4g5e6nsz.googlevideo.com",
            "marketplace.visualstudio.com",
            "static.cloudflareinsights.com",
            "generativelanguage.googleapis.com",
            "browser-intake-datadoghq.com",
            "o1158394.ingest.sentry.io",
            "telemetry.individual.githubcopilot.com",
            "westus2-0.in.applicationinsights.azure.com",
            "selector1._domainkey.example.com",
            "4.3.2.1.in-addr.arpa",
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa",
            "",
        ] {
            assert_eq!(suspicious(ok), None, "{ok}");
        }
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
        assert_eq!(entropy("aaaa"), 0.0);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let r = response();
        for cut in [0, 5, 13, 30, r.len() - 3] {
            assert!(answer(&r[..cut]).is_err(), "cut at {cut}");
        }
        // A pointer to itself.
        let mut looped = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend([0xc0, 12]);
        assert!(question(&looped).is_err());
        let mut odd = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        odd.push(0x80);
        assert!(question(&odd).is_err());
    }
}
