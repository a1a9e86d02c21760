//! Secrets a policy refers to rather than contains (`HttpRewrite` values):
//! the proxy resolves them to inject, leashd to redact them from events.

/// A rewrite's value: literal, or a reference to a secret on the host —
/// `leash-secret:env:NAME` (leashd's environment, which the proxy inherits)
/// or `leash-secret:file:/path` (a root-owned file others cannot read; one
/// trailing newline dropped) — so a policy file can be shared without it.
pub fn resolve(value: &str) -> Result<String, String> {
    let Some(reference) = value.strip_prefix("leash-secret:") else { return Ok(value.to_owned()) };
    if let Some(name) = reference.strip_prefix("env:") {
        return std::env::var(name).map_err(|_| format!("the secret's variable {name} is not set for leashd"));
    }
    if let Some(path) = reference.strip_prefix("file:") {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("the secret's file {path}: {e}"))?;
        if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
            return Err(format!("the secret's file {path} must be root's and unreadable by others (0600)"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("the secret's file {path}: {e}"))?;
        return Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned());
    }
    Err("a secret reference is leash-secret:env:NAME or leash-secret:file:/path".to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_resolve_from_files_that_others_cannot_read() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(super::resolve("Bearer x").unwrap(), "Bearer x");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "Bearer s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let reference = format!("leash-secret:file:{}", f.display());
        if nix::unistd::geteuid().is_root() {
            assert_eq!(super::resolve(&reference).unwrap(), "Bearer s3cret");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(super::resolve(&reference).unwrap_err().contains("0600"));
        }
        assert!(super::resolve("leash-secret:env:LEASH_NO_SUCH_VARIABLE").unwrap_err().contains("not set"));
        assert!(super::resolve("leash-secret:vault:x").is_err());
    }
}
