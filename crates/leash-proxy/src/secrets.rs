//! A session's credentials as the proxy holds them: the decoy the
//! container has, and the real value that replaces it in a request where
//! `SecretUse` allows (and, in answers, the real value that an upstream
//! echoes turned back into the decoy).
//!
//! A decoy and its value have the same length, so swapping never changes
//! a body's length: bodies are swapped as they stream, holding back only
//! the last few bytes of each chunk (a decoy may straddle two).

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use leash_proto::v1 as pb;

/// The shortest decoy accepted (leashd makes them far longer).
const MIN_DECOY: usize = 16;

/// One credential.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Secret {
    /// Its name (`Secret::"<name>"`).
    pub name: String,
    /// The real value.
    pub value: String,
    /// The container's decoy.
    pub decoy: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A session's credentials.
#[derive(Clone, Debug, Default)]
pub struct Vault {
    secrets: Vec<Secret>,
}

impl Vault {
    /// Checks what leashd sent: names, decoys long enough, of the value's
    /// length, and no decoy inside another's value or decoy.
    pub fn new(given: Vec<pb::SessionSecret>) -> Result<Vault, String> {
        let secrets: Vec<Secret> =
            given.into_iter().map(|s| Secret { name: s.name, value: s.value, decoy: s.decoy }).collect();
        for s in &secrets {
            if s.name.is_empty() {
                return Err("a secret without a name".into());
            }
            if s.decoy.len() < MIN_DECOY || s.decoy.len() != s.value.len() {
                return Err(format!(
                    "secret {}: its decoy must be as long as its value, and at least {MIN_DECOY} bytes",
                    s.name
                ));
            }
            let clash = secrets.iter().any(|o| {
                o.value.contains(&s.decoy)
                    || (o.name != s.name && (o.decoy.contains(&s.decoy) || s.decoy.contains(&o.decoy)))
            });
            if clash {
                return Err(format!("secret {}: its decoy collides with a value or another decoy", s.name));
            }
        }
        Ok(Vault { secrets })
    }

    /// No credentials.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The credentials.
    pub fn secrets(&self) -> &[Secret] {
        &self.secrets
    }

    /// The secrets whose decoy occurs in `text`.
    pub fn decoys_in(&self, text: &[u8]) -> Vec<usize> {
        (0..self.secrets.len())
            .filter(|i| memchr::memmem::find(text, self.secrets[*i].decoy.as_bytes()).is_some())
            .collect()
    }

    /// The secrets whose real value occurs in `text`.
    pub fn values_in(&self, text: &[u8]) -> Vec<usize> {
        (0..self.secrets.len())
            .filter(|i| memchr::memmem::find(text, self.secrets[*i].value.as_bytes()).is_some())
            .collect()
    }

    /// The longest decoy (values are as long).
    pub fn longest(&self) -> usize {
        self.secrets.iter().map(|s| s.decoy.len()).max().unwrap_or(0)
    }

    fn path(dir: &Path, session: &str) -> PathBuf {
        dir.join(format!("{session}.json"))
    }

    /// Saves the credentials for a restarted proxy: 0600 in `dir`, which
    /// must be root's and 0700.
    pub fn save(&self, dir: &Path, session: &str) -> anyhow::Result<()> {
        let path = Self::path(dir, session);
        if self.secrets.is_empty() {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        crate::ca::write_private(dir, &path, &serde_json::to_vec(&self.secrets)?)
    }

    /// What [`Vault::save`] saved (nothing: no credentials).
    pub fn load(dir: &Path, session: &str) -> anyhow::Result<Vault> {
        let path = Self::path(dir, session);
        if !path.exists() {
            return Ok(Vault::default());
        }
        let text = crate::ca::read_private(&path)?;
        Ok(Vault { secrets: serde_json::from_str(&text)? })
    }

    /// Deletes what [`Vault::save`] saved.
    pub fn forget(dir: &Path, session: &str) {
        let _ = std::fs::remove_file(Self::path(dir, session));
    }
}

/// Replaces every occurrence of each `(from, to)` pair (of equal lengths)
/// in `buf`; whether each pair was found.
pub fn replace_all(buf: &mut [u8], pairs: &[(&[u8], &[u8])]) -> Vec<bool> {
    pairs
        .iter()
        .map(|(from, to)| {
            debug_assert_eq!(from.len(), to.len());
            let mut found = false;
            if from.is_empty() {
                return found;
            }
            let mut at = 0;
            while let Some(i) = memchr::memmem::find(&buf[at..], from) {
                let start = at + i;
                buf[start..start + from.len()].copy_from_slice(to);
                at = start + from.len();
                found = true;
            }
            found
        })
        .collect()
}

/// Swaps equal-length needles in a stream of chunks, holding back the last
/// `longest - 1` bytes of each (a needle may straddle two chunks): feed a
/// chunk, look at and edit [`Swapper::buffer`], take what is safe to send.
#[derive(Debug)]
pub struct Swapper {
    carry: BytesMut,
    keep: usize,
}

impl Swapper {
    /// For needles of at most `longest` bytes.
    pub fn new(longest: usize) -> Swapper {
        Swapper { carry: BytesMut::new(), keep: longest.saturating_sub(1) }
    }

    /// Appends a chunk to the held-back bytes.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.carry.extend_from_slice(chunk);
    }

    /// Every byte that may hold a needle: the held-back bytes and the chunk fed.
    pub fn buffer(&mut self) -> &mut [u8] {
        &mut self.carry
    }

    /// What is safe to send: all but the last `longest - 1` bytes.
    pub fn take(&mut self) -> Bytes {
        let out = self.carry.len().saturating_sub(self.keep);
        self.carry.split_to(out).freeze()
    }

    /// The held-back bytes, at the end of the stream.
    pub fn finish(&mut self) -> Bytes {
        self.carry.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::new(vec![
            pb::SessionSecret {
                name: "A".into(),
                value: "real-AAAAAAAAAAAAAAAA".into(),
                decoy: "fake-aaaaaaaaaaaaaaaa".into(),
            },
            pb::SessionSecret {
                name: "B".into(),
                value: "real-BBBBBBBBBBBBBBBB".into(),
                decoy: "fake-bbbbbbbbbbbbbbbb".into(),
            },
        ])
        .unwrap()
    }

    #[test]
    fn decoys_and_values_are_found() {
        let v = vault();
        assert_eq!(v.decoys_in(b"x-api-key: fake-bbbbbbbbbbbbbbbb"), [1]);
        assert_eq!(v.values_in(b"{\"echo\":\"real-AAAAAAAAAAAAAAAA\"}"), [0]);
        assert!(v.decoys_in(b"fake-aaaa").is_empty());
    }

    #[test]
    fn bad_sets_are_refused() {
        let one =
            |value: &str, decoy: &str| pb::SessionSecret { name: "K".into(), value: value.into(), decoy: decoy.into() };
        assert!(Vault::new(vec![one("short", "tiny")]).is_err());
        assert!(Vault::new(vec![one("0123456789abcdefXY", "0123456789abcdef")]).is_err(), "lengths differ");
        let e = Vault::new(vec![
            one("xx0123456789abcdefgh", "0123456789abcdefgh"),
            one("aaaaaaaaaaaaaaaaaaaa", "0123456789abcdefghij"),
        ]);
        assert!(e.is_err(), "a decoy inside a value");
    }

    #[test]
    fn swapping_across_chunk_boundaries_loses_and_adds_nothing() {
        let v = vault();
        let s = &v.secrets()[0];
        let text = format!("{{\"k\":\"{}\",\"pad\":\"{}\",\"again\":\"{}\"}}", s.decoy, "z".repeat(50), s.decoy);
        let want = text.replace(&s.decoy, &s.value);
        for size in 1..=text.len() {
            let mut sw = Swapper::new(v.longest());
            let mut out = Vec::new();
            let pairs = [(s.decoy.as_bytes(), s.value.as_bytes())];
            for chunk in text.as_bytes().chunks(size) {
                sw.feed(chunk);
                replace_all(sw.buffer(), &pairs);
                out.extend_from_slice(&sw.take());
            }
            out.extend_from_slice(&sw.finish());
            assert_eq!(String::from_utf8(out).unwrap(), want, "chunks of {size}");
        }
    }

    #[test]
    fn saved_secrets_come_back_and_debug_hides_values() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("secrets");
        let v = vault();
        if nix::unistd::geteuid().is_root() {
            v.save(&private, "s1").unwrap();
            assert_eq!(Vault::load(&private, "s1").unwrap().secrets(), v.secrets());
            Vault::forget(&private, "s1");
            assert!(Vault::load(&private, "s1").unwrap().is_empty());
        }
        assert!(!format!("{v:?}").contains("real-"));
    }
}
