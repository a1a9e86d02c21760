//! What the rest of leashd sees of the Control UI and its API: the state
//! `leashctl status` shows and the single-use login URLs `UiLogin` hands
//! out (so that the gRPC service needs nothing else of the API).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::auth::Auth;

/// What `leashctl status` shows of the API.
#[derive(Clone, Debug, Default)]
pub struct ApiState {
    /// The configured address.
    pub listen: Option<SocketAddr>,
    /// The address served.
    pub bound: Option<SocketAddr>,
    /// Why it is not served.
    pub error: Option<String>,
}

/// The shared handle: what status reports and what `UiLogin` hands out.
#[derive(Clone, Debug, Default)]
pub struct Handle {
    pub(super) state: Arc<Mutex<ApiState>>,
    pub(super) auth: Option<Arc<Auth>>,
}

impl Handle {
    /// The API's state now.
    pub fn state(&self) -> ApiState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A URL with a fresh single-use login code, when the API is served.
    pub fn login_url(&self) -> Option<String> {
        let bound = self.state().bound?;
        let code = self.auth.as_ref()?.issue_code();
        Some(format!("{}login?code={code}", leash_core::listen::url(&bound)))
    }
}
