//! `leashctl policy` through leashd and leash-policy, as users run it.

use std::time::Duration;

use leash_testkit::{Stack, require_root};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_and_check_through_the_daemons() {
    if !require_root("validate_and_check_through_the_daemons") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    stack.wait_healthy(Duration::from_secs(10));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");

    let out = stack.leashctl(&["policy", "validate", root.join("examples/e15-principal.cedar").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[dir_missing_trailing_slash]") && stdout.contains("valid: 1 policy"), "{stdout}");

    let bad = stack.root().join("bad.cedar");
    std::fs::write(&bad, "permit (principal, action, resource);\nforbid (principal action, resource);\n").unwrap();
    let out = stack.leashctl(&["policy", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("file: {}:2:19", bad.display())), "{stdout}");
    assert!(stdout.contains("2 | forbid (principal action, resource);"), "{stdout}");
    let out = stack.leashctl(&["policy", "validate", "--json", bad.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["valid"].as_bool(), v["errors"][0]["line"].as_u64()), (Some(false), Some(2)));

    let garbage = stack.root().join("garbage.cedar");
    std::fs::write(&garbage, [0xff, 0xfe, 0x00, 0x12]).unwrap();
    let out = stack.leashctl(&["policy", "validate", garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not UTF-8"), "{out:?}");

    let check = |args: &[&str]| text(&stack.leashctl(&[&["policy", "check"], args].concat()).stdout).trim().to_owned();
    assert_eq!(
        check(&["FileOpenReadWrite", "/w/p/.git/hooks/pre-commit"]),
        "deny FileOpenReadWrite File::\"/w/p/.git/hooks/pre-commit\" by protect-host"
    );
    assert_eq!(
        check(&["FileOpenReadOnly", "/w/p/.git/hooks/pre-commit"]),
        "allow FileOpenReadOnly File::\"/w/p/.git/hooks/pre-commit\" by default-files"
    );
    assert_eq!(
        check(&["NetworkConnect", "api.example.com:443"]),
        "allow NetworkConnect Host::\"api.example.com:443\" by default-network"
    );
    assert_eq!(
        check(&["McpCall", "search@mcp.example.com"]),
        "deny McpCall MCP::Tool::\"search\" in MCP::Server::\"mcp.example.com\" (no policy permits it)"
    );
    let out = stack.leashctl(&["policy", "lines"]);
    assert_eq!(
        text(&out.stdout),
        "Allow open files, read files, write files directory / [default-files]\n\
         Allow run processes directory / [default-exec]\n\
         Allow network connect any host [default-network]\n\
         Deny write files any file (with conditions) [protect-host]\n"
    );
    let out = stack.leashctl(&["policy", "show", "--sources"]);
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with("mode: enforce\n")
            && shown.contains("// protect-host")
            && shown.contains("resource.name == \".envrc\""),
        "{shown}"
    );
    let out = stack.leashctl(&["policy", "check", "Teleport", "/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown action \"Teleport\""), "{out:?}");
}
