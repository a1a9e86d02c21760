//! `leashctl policy` through leashd and leash-policy, as users run it.

use std::time::Duration;

use leash_testkit::{Stack, require_root};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn go_leash_mixed_lists_validate_and_decide_as_the_go_leash_meant() {
    if !require_root("go_leash_mixed_lists_validate_and_decide_as_the_go_leash_meant") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    stack.wait_healthy(Duration::from_secs(10));
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/examples/e16-go-mixed-list.cedar");
    let file = file.to_str().unwrap();
    let out = stack.leashctl(&["policy", "validate", file]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("[mixed_list_split]") && stdout.contains("valid: 3 policies"), "{stdout}");
    assert!(stdout.contains(r#"resource in [File::"/etc/passwd"] || resource in [Dir::"/tmp/"]"#), "{stdout}");
    assert!(stdout.contains("[optional_context_guarded]"), "{stdout}");
    let out = stack.leashctl(&["policy", "set", file]);
    assert!(out.status.success(), "{out:?}");
    let check = |args: &[&str]| text(&stack.leashctl(&[&["policy", "check"], args].concat()).stdout).trim().to_owned();
    // The file exactly, and anything under the directory; nothing else.
    for (path, decided) in [
        ("/etc/passwd", "deny FileOpenReadOnly File::\"/etc/passwd\" by no-passwd-or-tmp"),
        ("/etc/passwd.bak", "allow FileOpenReadOnly File::\"/etc/passwd.bak\" by all"),
        ("/tmp/build/out.o", "deny FileOpenReadOnly File::\"/tmp/build/out.o\" by no-passwd-or-tmp"),
        ("/tmpfile", "allow FileOpenReadOnly File::\"/tmpfile\" by all"),
    ] {
        assert_eq!(check(&["FileOpenReadOnly", path]), decided);
    }
    assert_eq!(
        check(&["FileOpenReadWrite", "/etc/passwd"]),
        "deny FileOpenReadWrite File::\"/etc/passwd\" by no-passwd-or-tmp",
        "FileOpen covers writes too"
    );
    assert!(
        check(&["NetworkConnect", "203.0.113.9:443", "--context", "hostname=paste.example.com"]).starts_with("deny")
    );
    assert!(check(&["NetworkConnect", "203.0.113.9:443"]).starts_with("allow"));
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
    assert_eq!(
        check(&["SecretUse", "ANTHROPIC_API_KEY", "--context", "host=api.anthropic.com"]),
        "allow SecretUse Secret::\"ANTHROPIC_API_KEY\" by default-secret-anthropic"
    );
    assert_eq!(
        check(&[
            "SecretUse",
            "ANTHROPIC_API_KEY",
            "--context",
            "host=paste.example.com",
            "--context",
            "location=header"
        ]),
        "deny SecretUse Secret::\"ANTHROPIC_API_KEY\" (no policy permits it)"
    );
    let in_body =
        ["SecretUse", "ANTHROPIC_API_KEY", "--context", "host=api.anthropic.com", "--context", "location=body"];
    assert_eq!(check(&in_body), "deny SecretUse Secret::\"ANTHROPIC_API_KEY\" (no policy permits it)");
    let out = stack.leashctl(&["policy", "lines"]);
    assert_eq!(
        text(&out.stdout),
        "Allow open files, read files, write files directory / [default-files]\n\
         Allow run processes directory / [default-exec]\n\
         Allow network connect any host [default-network]\n\
         Allow network connect range 127.0.0.0/8, range ::1/128 [default-loopback]\n\
         Allow send secrets secret ANTHROPIC_API_KEY, secret CLAUDE_CODE_OAUTH_TOKEN (with conditions) [default-secret-anthropic]\n\
         Allow send secrets secret OPENAI_API_KEY, secret CODEX_API_KEY (with conditions) [default-secret-openai]\n\
         Allow send secrets secret GEMINI_API_KEY (with conditions) [default-secret-gemini]\n\
         Allow send secrets secret DASHSCOPE_API_KEY (with conditions) [default-secret-dashscope]\n\
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
    // A decision records what was authorized, for replay.
    let out = stack.leashctl(&[
        "policy",
        "check",
        "--json",
        "--context",
        "hostname=api.example.com",
        "NetworkConnect",
        "93.184.216.34:443",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["decision"], &v["action"], &v["resource"], &v["context"]["hostname"], &v["policies"][0]),
        (
            &serde_json::json!("allow"),
            &serde_json::json!("NetworkConnect"),
            &serde_json::json!("Host::\"93.184.216.34:443\""),
            &serde_json::json!("api.example.com"),
            &serde_json::json!("default-network")
        ),
        "{v}"
    );
    assert_eq!(v["generation"], 1, "{v}");
    let out = stack.leashctl(&["policy", "check", "Teleport", "/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown action \"Teleport\""), "{out:?}");
}

#[test]
fn the_default_policy_is_edited_live_persisted_and_reloaded_from_its_file() {
    if !require_root("the_default_policy_is_edited_live_persisted_and_reloaded_from_its_file") {
        return;
    }
    let mut stack = Stack::new();
    stack.start_leashd();
    stack.wait_healthy(Duration::from_secs(10));
    let check = |path: &str| text(&stack.leashctl(&["policy", "check", "FileOpen", path]).stdout).trim().to_owned();
    let no_tmp = r#"@id("no-tmp") forbid (principal, action, resource in Dir::"/tmp/")"#;

    // Runtime edits: add, then remove by id.
    let out = stack.leashctl(&["policy", "add", no_tmp]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("default policy (new sessions): 10 policies in force"), "{out:?}");
    assert_eq!(check("/tmp/x"), "deny FileOpen File::\"/tmp/x\" by no-tmp");
    let out = stack.leashctl(&["policy", "remove", "no-tmp"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(check("/tmp/x"), "allow FileOpen File::\"/tmp/x\" by default-files");
    let out = stack.leashctl(&["policy", "remove", "no-such-policy"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains("\"no-such-policy\" not found"), "{out:?}");

    // A policy file: set, then edited on disk and reloaded (inotify).
    let file = stack.root().join("default.cedar");
    std::fs::write(&file, "@id(\"all\") permit (principal, action, resource);\n").unwrap();
    let out = stack.leashctl(&["policy", "set", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(check("/tmp/x"), "allow FileOpen File::\"/tmp/x\" by all");
    std::fs::write(&file, format!("@id(\"all\") permit (principal, action, resource);\n{no_tmp};\n")).unwrap();
    leash_testkit::eventually(Duration::from_secs(5), "the edited file reloaded", || {
        (check("/tmp/x") == "deny FileOpen File::\"/tmp/x\" by no-tmp").then_some(())
    });
    leash_testkit::eventually(Duration::from_secs(5), "a policy.reload event", || {
        stack.events().into_iter().find(|e| e["action"] == "policy.reload")
    });
    // An invalid edit is refused and the previous policy stays in force.
    std::fs::write(&file, "permit (principal, action, resource").unwrap();
    let invalid = leash_testkit::eventually(Duration::from_secs(5), "the invalid file reported", || {
        stack.events().into_iter().find(|e| e["action"] == "policy.invalid")
    });
    assert!(invalid["details"]["error"].as_str().unwrap().contains("default.cedar:1:"), "{invalid}");
    assert_eq!(check("/tmp/x"), "deny FileOpen File::\"/tmp/x\" by no-tmp");

    // Persist folds the runtime layer into the file layer; --write-back
    // writes the file, with the caller's rights.
    std::fs::write(&file, "@id(\"all\") permit (principal, action, resource);\n").unwrap();
    leash_testkit::eventually(Duration::from_secs(5), "the fixed file reloaded", || {
        (check("/tmp/x") == "allow FileOpen File::\"/tmp/x\" by all").then_some(())
    });
    stack.leashctl(&["policy", "add", no_tmp]);
    let out = stack.leashctl(&["policy", "persist", "--write-back", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["written_back"], true, "{v}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.contains("@id(\"all\")") && written.contains("@id(\"no-tmp\")"), "{written}");
    assert_eq!(std::fs::read_to_string(v["saved"].as_str().unwrap()).unwrap(), written);

    // The tables of the policy in force carry its generation and reasons.
    let out = stack.leashctl(&["policy", "tables", "--json"]);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let generation = t["generation"].as_u64().unwrap();
    assert!(generation >= 6, "{t}");
    let open = t["files"].as_array().unwrap().iter().find(|f| f["action"] == "open").unwrap().clone();
    let tmp = open["prefixes"].as_array().unwrap().iter().find(|p| p["key"] == "/tmp/").unwrap().clone();
    assert_eq!((tmp["allow"].as_bool(), tmp["reasons"][0].as_str()), (Some(false), Some("no-tmp")), "{t}");

    // All of it survives a restart of leash-policy.
    let pid = Stack::component(&stack.status().unwrap(), "leash-policy")["pid"].as_u64().unwrap() as u32;
    leash_testkit::kill(pid, rustix::process::Signal::KILL);
    leash_testkit::eventually(Duration::from_secs(5), "leash-policy back with the edits", || {
        (check("/tmp/x") == "deny FileOpen File::\"/tmp/x\" by no-tmp").then_some(())
    });
    let t: serde_json::Value = serde_json::from_slice(&stack.leashctl(&["policy", "tables", "--json"]).stdout).unwrap();
    assert_eq!(t["generation"].as_u64(), Some(generation));
    // And the file is still watched after the restart.
    std::fs::write(&file, "@id(\"all\") permit (principal, action, resource);\n").unwrap();
    leash_testkit::eventually(Duration::from_secs(5), "reloaded after a restart", || {
        (check("/tmp/x") == "allow FileOpen File::\"/tmp/x\" by all").then_some(())
    });
}
