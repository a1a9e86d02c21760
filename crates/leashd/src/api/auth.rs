//! The API's credentials: a token for scripts, single-use codes for
//! browsers, and the cookies those codes become.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Ctx;

/// The token file's name in the runtime dir.
pub const TOKEN_FILE: &str = "api.token";
/// The login cookie's name.
pub const COOKIE: &str = "leash_ui";
/// How long a login code may wait for its browser.
const CODE_LIFETIME: Duration = Duration::from_secs(30);
/// How long a login cookie lasts.
const COOKIE_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The API's credentials.
#[derive(Debug)]
pub struct Auth {
    token: String,
    codes: Mutex<HashMap<String, Instant>>,
    cookies: Mutex<HashMap<String, Instant>>,
}

/// Fills `buf` from the kernel's random source.
pub fn random(buf: &mut [u8]) {
    use std::io::Read;
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    // Without randomness no credential can be safe: refuse to go on.
    if let Err(e) = filled {
        panic!("cannot read /dev/urandom: {e}");
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Auth {
    /// A fresh token, written to `<runtime dir>/api.token` (0640, group
    /// `leash` when there is one, else 0600).
    pub fn create(runtime_dir: &Path, group: Option<u32>) -> anyhow::Result<Auth> {
        let token = random_hex(32);
        let path = runtime_dir.join(TOKEN_FILE);
        let tmp = runtime_dir.join(format!(".{TOKEN_FILE}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        if let Some(gid) = group {
            rustix::fs::fchown(&f, None, Some(rustix::fs::Gid::from_raw(gid)))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        }
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        std::fs::rename(&tmp, &path)?;
        Ok(Auth { token, codes: Mutex::default(), cookies: Mutex::default() })
    }

    /// A single-use code, valid for seconds.
    pub fn issue_code(&self) -> String {
        let code = random_hex(16);
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, t| t.elapsed() < CODE_LIFETIME);
        codes.insert(code.clone(), Instant::now());
        code
    }

    /// Spends a code: a new cookie value when it was valid.
    fn redeem(&self, code: &str) -> Option<String> {
        let issued = self.codes.lock().unwrap_or_else(|p| p.into_inner()).remove(code)?;
        if issued.elapsed() >= CODE_LIFETIME {
            return None;
        }
        let cookie = random_hex(32);
        let mut cookies = self.cookies.lock().unwrap_or_else(|p| p.into_inner());
        cookies.retain(|_, t| t.elapsed() < COOKIE_LIFETIME);
        cookies.insert(cookie.clone(), Instant::now());
        Some(cookie)
    }

    /// The request carries the token or a live cookie.
    pub fn admits(&self, h: &HeaderMap) -> bool {
        let bearer = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), self.token.as_bytes()));
        if bearer {
            return true;
        }
        let cookies = self.cookies.lock().unwrap_or_else(|p| p.into_inner());
        cookie_values(h, COOKIE).any(|v| cookies.get(v).is_some_and(|t| t.elapsed() < COOKIE_LIFETIME))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Values of the cookie `name` in the request's Cookie headers.
fn cookie_values<'a>(h: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
}

/// `GET /login?code=…`: a valid code becomes an HttpOnly, SameSite=Strict
/// cookie and the browser goes on to the UI (the code leaves the address bar).
pub(super) async fn login(State(ctx): State<Ctx>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(cookie) = q.get("code").and_then(|c| ctx.auth.redeem(c)) else {
        return (
            StatusCode::UNAUTHORIZED,
            "This login link was used already or has expired. Run `leash --open` (or `leashctl ui`) again.\n",
        )
            .into_response();
    };
    let set = format!("{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", COOKIE_LIFETIME.as_secs());
    let mut r = (StatusCode::SEE_OTHER, "").into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    if let Ok(v) = HeaderValue::from_str(&set) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_single_use_and_cookies_admit() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::create(dir.path(), None).unwrap();
        let file = std::fs::read_to_string(dir.path().join(TOKEN_FILE)).unwrap();
        assert_eq!(file.trim(), auth.token);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let code = auth.issue_code();
        let cookie = auth.redeem(&code).expect("a fresh code is good");
        assert!(auth.redeem(&code).is_none(), "a code is spent once");
        assert!(auth.redeem("nope").is_none());
        let mut h = HeaderMap::new();
        assert!(!auth.admits(&h));
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("a=b; {COOKIE}={cookie}")).unwrap());
        assert!(auth.admits(&h));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {}", auth.token)).unwrap());
        assert!(auth.admits(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        assert!(!auth.admits(&h));
    }
}
