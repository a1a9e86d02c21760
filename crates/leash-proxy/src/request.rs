//! What the policy sees of an HTTP request: its scheme, method, path and
//! query (`NetworkConnect`'s context), and the paths refused before any
//! decision because the server would read them as another path.

use std::collections::HashMap;

/// An HTTP request as `NetworkConnect`'s context carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// `https` (TLS terminated by the proxy) or `http`.
    pub scheme: String,
    /// The method in upper case (`GET`).
    pub method: String,
    /// The path as sent, percent-encoding as is, without the query.
    pub path: String,
    /// The raw query string, without `?` (empty when there is none).
    pub query: String,
}

impl RequestFacts {
    /// The facts of a request received over TLS (`tls`) or not.
    pub fn of<B>(req: &hyper::Request<B>, tls: bool) -> RequestFacts {
        RequestFacts {
            scheme: if tls { "https" } else { "http" }.to_owned(),
            method: req.method().as_str().to_ascii_uppercase(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().unwrap_or("").to_owned(),
        }
    }

    /// `NetworkConnect`'s context: `scheme`, `method`, `path`, `query`, and
    /// `hostname` when the request was for a name.
    pub fn context(&self, name: Option<&str>) -> HashMap<String, String> {
        let mut c: HashMap<String, String> =
            [("scheme", &self.scheme), ("method", &self.method), ("path", &self.path), ("query", &self.query)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect();
        if let Some(n) = name {
            c.insert("hostname".to_owned(), n.to_owned());
        }
        c
    }
}

/// The reason a request with a dot-segment in its path is refused, as
/// events show it.
pub const DOT_SEGMENT: &str = "leash:dot-segment";

/// Whether `path` has a dot-segment (`.` or `..`) once what servers read
/// as its characters is: `%2e` as `.`, `%2f`, `\` and `%5c` as `/`, and a
/// segment's `;parameters` left out. A server resolves such a segment to a
/// path other than the one the policy saw (`/repos/org/../other` is
/// `/repos/other`), so the proxy refuses the request rather than decide it.
/// Encoded slashes alone (`/@scope%2fname`) are not dot-segments.
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut read = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes.get(i..i + 3) {
            Some([b'%', a, b]) => match (a.to_ascii_lowercase(), b.to_ascii_lowercase()) {
                (b'2', b'e') => Some('.'),
                (b'2', b'f') | (b'5', b'c') => Some('/'),
                _ => None,
            },
            _ => None,
        };
        match decoded {
            Some(c) => {
                read.push(c);
                i += 3;
            }
            None => {
                read.push(if bytes[i] == b'\\' { '/' } else { char::from(bytes[i]) });
                i += 1;
            }
        }
    }
    read.split('/').map(|segment| segment.split(';').next().unwrap_or_default()).any(|s| s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_the_request_as_sent() {
        let r = hyper::Request::builder().method("get").uri("/repos/org/x%2Fy?a=1&b=%20").body(()).unwrap();
        let f = RequestFacts::of(&r, true);
        assert_eq!(
            (f.scheme.as_str(), f.method.as_str(), f.path.as_str(), f.query.as_str()),
            ("https", "GET", "/repos/org/x%2Fy", "a=1&b=%20")
        );
        let c = f.context(Some("api.github.com"));
        assert_eq!((c["hostname"].as_str(), c["query"].as_str(), c.len()), ("api.github.com", "a=1&b=%20", 5));
        let r = hyper::Request::builder().method("POST").uri("http://h.test/p").body(()).unwrap();
        let f = RequestFacts::of(&r, false);
        assert_eq!((f.scheme.as_str(), f.path.as_str(), f.query.as_str()), ("http", "/p", ""));
        assert!(!f.context(None).contains_key("hostname"));
    }

    /// A decider holding `tables` with no policy service to ask: what it
    /// would ask is denied as `leash:policy-unavailable`.
    fn decider(tables: leash_core::tables::Tables) -> crate::decide::Decider {
        let d = crate::decide::Decider::new("/nonexistent/leash-policy.sock".into());
        d.hold("s", crate::decide::Held { tables, mode: Some(leash_core::Mode::Enforce) });
        d
    }

    #[tokio::test]
    async fn only_what_a_request_rule_covers_is_asked() {
        use leash_core::tables::{NetGuards, Tables, Verdict};
        let mut t = Tables { reasons: vec![vec!["any".into()], vec!["no-lan".into()]], ..Default::default() };
        t.hosts.default = Some(Verdict::new(true, 0));
        t.hosts.evaluate.insert(("api.github.com".into(), None));
        t.net.default_v4 = Some(Verdict::new(true, 0));
        t.net.ranges.push(("10.0.0.0".parse().unwrap(), 8, Verdict::new(false, 1)));
        t.guard_net(&NetGuards::standard(&[], &[]));
        let get = RequestFacts { scheme: "https".into(), method: "GET".into(), path: "/".into(), query: String::new() };
        let ip = "192.0.2.1".parse().unwrap();
        let d = decider(t.clone());
        let asked = d.request("s", Some("api.github.com"), ip, 443, &get).await;
        assert_eq!((asked.allow, asked.reasons), (false, vec!["leash:policy-unavailable".to_owned()]));
        let other = d.request("s", Some("github.com"), ip, 443, &get).await;
        assert_eq!((other.allow, other.reasons), (true, vec!["any".to_owned()]));
        // An address entry that denies wins, and a guard always does.
        let lan = d.request("s", Some("github.com"), "10.1.2.3".parse().unwrap(), 443, &get).await;
        assert_eq!((lan.allow, lan.reasons), (false, vec!["no-lan".to_owned()]));
        let local = d.request("s", Some("github.com"), "127.0.0.1".parse().unwrap(), 443, &get).await;
        assert_eq!(local.reasons, [leash_core::tables::GUARD_LOCAL]);
        // Where a policy on addresses reads the request, the entry is asked again.
        t.net.evaluate_requests = true;
        let d = decider(t);
        let lan = d.request("s", Some("github.com"), "10.1.2.3".parse().unwrap(), 443, &get).await;
        assert_eq!(lan.reasons, ["leash:policy-unavailable"]);
        let local = d.request("s", None, "127.0.0.1".parse().unwrap(), 80, &get).await;
        assert_eq!(local.reasons, [leash_core::tables::GUARD_LOCAL]);
        let by_address = d.request("s", None, ip, 80, &get).await;
        assert_eq!(by_address.reasons, ["leash:policy-unavailable"]);
        // A connection without a request keeps the tables' answer.
        assert!(d.connect("s", None, ip, 80).await.allow);
    }

    #[test]
    fn dot_segments_are_found_however_they_are_written() {
        for path in [
            "/repos/org/../other/x",
            "/repos/org/./x",
            "/repos/org/..",
            "/repos/org/%2e%2e/other",
            "/repos/org/%2E%2e/other",
            "/repos/org/.%2e/other",
            "/repos/org%2f..%2fother/x",
            "/repos/org%2F%2E%2E%2Fother",
            "/repos/org\\..\\other",
            "/repos/org/%5c..%5cother",
            "/repos/org/..;/other",
            "/repos/org/.;x/y",
            "..",
            "/.",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/repos/org/x",
            "/",
            "",
            "*",
            "/@types%2fnode",
            "/api/v4/projects/group%2Fproject",
            "/a/b..c/...",
            "/a/.hidden/x",
            "/a/..b",
            "/v1.2/x",
            "/a/%2e%2e%2e",
            "/caf%C3%A9/x",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }
}
