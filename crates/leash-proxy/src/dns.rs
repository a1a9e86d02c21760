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
