//! The store: layers, edits, persistence, generations and reloads.

use super::*;

fn store() -> (Arc<Store>, PathBuf) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "leash-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (Store::open(dir.join("state"), crate::default_sources()).unwrap(), dir)
}

fn src(name: &str, text: &str) -> Source {
    Source { name: name.into(), text: text.into() }
}

const PERMIT_ALL: &str = "@id(\"all\") permit (principal, action, resource);\n";
const NO_TMP: &str = "@id(\"no-tmp\") forbid (principal, action, resource in Dir::\"/tmp/\");";

fn allows(store: &Store, key: &str, path: &str) -> bool {
    let c = store.get(key).unwrap();
    let file = crate::resource::Resource::File(path.into());
    c.engine.authorize("claude", crate::engine::Action::FileOpen, &file, &BTreeMap::new()).allow
}

#[test]
fn edits_add_and_remove_by_id_or_text_and_bump_the_generation() {
    let (store, _dir) = store();
    let o = Opening { principal: "claude".into(), sources: vec![src("p.cedar", PERMIT_ALL)], ..Default::default() };
    let a = store.open_session("s1", o).unwrap();
    assert_eq!(a.generation, 1);
    assert!(allows(&store, "s1", "/tmp/x"));
    let a = store.edit("s1", &[NO_TMP.trim_end_matches(';').to_owned()], &[]).unwrap();
    assert_eq!((a.added, a.generation), (1, 2));
    assert!(!allows(&store, "s1", "/tmp/x"));
    // The same statement again is not added twice.
    assert_eq!(store.edit("s1", &[NO_TMP.to_owned()], &[]).unwrap().added, 0);
    store.edit("s1", &[], &["no-tmp".to_owned()]).unwrap();
    assert!(allows(&store, "s1", "/tmp/x"));
    store.edit("s1", &[NO_TMP.to_owned()], &[]).unwrap();
    store.edit("s1", &[], &[NO_TMP.to_owned()]).unwrap();
    assert!(allows(&store, "s1", "/tmp/x"), "removed by its text");
    let e = store.edit("s1", &[], &["nope".to_owned()]).unwrap_err();
    assert!(e[0].message.contains("\"nope\" not found"), "{e:?}");
}

#[test]
fn an_invalid_change_keeps_the_previous_policy() {
    let (store, _dir) = store();
    let o = Opening { sources: vec![src("p.cedar", PERMIT_ALL)], ..Default::default() };
    store.open_session("s1", o).unwrap();
    let before = store.get("s1").unwrap().generation;
    let e = store.edit("s1", &["permit (principal, action == Action::\"Fly\", resource);".into()], &[]).unwrap_err();
    assert!(!e.is_empty());
    let e = store.set_layer("s1", Layer::File, vec![src("bad.cedar", "permit (")], None).unwrap_err();
    assert_eq!(e[0].file, "bad.cedar");
    assert_eq!(store.get("s1").unwrap().generation, before);
    assert!(allows(&store, "s1", "/tmp/x"));
}

#[test]
fn admin_policies_cannot_be_removed() {
    let (store, _dir) = store();
    let o = Opening {
        sources: vec![src("p.cedar", PERMIT_ALL)],
        admin: vec![src("/etc/leash/policy.d/10-site.cedar", NO_TMP)],
        ..Default::default()
    };
    store.open_session("s1", o).unwrap();
    let e = store.edit("s1", &[], &["no-tmp".into()]).unwrap_err();
    assert!(e[0].message.contains("administrator"), "{e:?}");
    assert!(!allows(&store, "s1", "/tmp/x"));
}

#[test]
fn default_edits_reach_new_sessions_only_and_survive_a_restart() {
    let (store, dir) = store();
    store.open_session("old", Opening::default()).unwrap();
    store.edit(DEFAULT, &[NO_TMP.into()], &[]).unwrap();
    assert!(!allows(&store, DEFAULT, "/tmp/x"));
    assert!(allows(&store, "old", "/tmp/x"), "a running session keeps its policy");
    store.open_session("new", Opening::default()).unwrap();
    assert!(!allows(&store, "new", "/tmp/x"));
    let (applied, text, file, copy) = store.persist(DEFAULT, None).unwrap();
    assert!(text.contains("no-tmp") && text.contains("default-files"), "{text}");
    assert_eq!(file, None);
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), text);
    assert!(applied.generation > 1);
    let generation = store.get(DEFAULT).unwrap().generation;
    store.set_mode("new", Mode::Shadow);
    drop(store);
    let again = Store::open(dir.join("state"), crate::default_sources()).unwrap();
    assert_eq!(again.get(DEFAULT).unwrap().generation, generation);
    assert!(!allows(&again, DEFAULT, "/tmp/x"));
    assert!(allows(&again, "old", "/tmp/x"));
    assert_eq!(again.get("new").unwrap().mode, Mode::Shadow);
}

fn wait_for(rx: &mut broadcast::Receiver<Change>, kind: &str) -> Change {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match rx.try_recv() {
            Ok(c) if c.kind == kind => return c,
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Empty) => {
                assert!(std::time::Instant::now() < deadline, "no {kind:?} change");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_watched_file_reloads_and_an_invalid_one_keeps_the_previous() {
    let (store, dir) = store();
    store.start_watching().unwrap();
    let file = dir.join("policy.cedar");
    std::fs::write(&file, PERMIT_ALL).unwrap();
    let me = nix::unistd::getuid().as_raw();
    let o = Opening {
        sources: vec![src(&file.display().to_string(), PERMIT_ALL)],
        file: Some(file.clone()),
        owner: me,
        writable: vec![dir.join("project")],
        ..Default::default()
    };
    let mut rx = store.subscribe();
    let a = store.open_session("s1", o).unwrap();
    assert!(a.watched, "{}", a.watch_note);
    std::fs::write(&file, format!("{PERMIT_ALL}{NO_TMP}\n")).unwrap();
    let c = wait_for(&mut rx, "reload");
    assert_eq!((c.session.as_str(), c.generation), ("s1", 2));
    assert!(!allows(&store, "s1", "/tmp/x"));
    std::fs::write(&file, "permit (principal, action, resource").unwrap();
    let c = wait_for(&mut rx, "invalid");
    assert!(c.errors[0].contains("policy.cedar"), "{:?}", c.errors);
    assert!(!allows(&store, "s1", "/tmp/x"), "the previous policy stays in force");
    assert_eq!(store.get("s1").unwrap().generation, 2);
}

#[test]
fn a_file_under_a_writable_mount_is_read_once_and_never_watched() {
    let (store, dir) = store();
    store.start_watching().unwrap();
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let inside = project.join("leash.cedar");
    std::fs::write(&inside, PERMIT_ALL).unwrap();
    let me = nix::unistd::getuid().as_raw();
    let o = Opening {
        sources: vec![src(&inside.display().to_string(), PERMIT_ALL)],
        file: Some(inside.clone()),
        owner: me,
        writable: vec![project.clone()],
        ..Default::default()
    };
    let a = store.open_session("s1", o).unwrap();
    assert!(!a.watched);
    assert!(a.watch_note.contains("this session's writable mount"), "{}", a.watch_note);
    // Another session's file outside any mount is watched, until a later
    // session mounts its directory writable.
    let outside = dir.join("elsewhere").join("p.cedar");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    std::fs::write(&outside, PERMIT_ALL).unwrap();
    let o = Opening {
        sources: vec![src(&outside.display().to_string(), PERMIT_ALL)],
        file: Some(outside.clone()),
        owner: me,
        ..Default::default()
    };
    assert!(store.open_session("s2", o).unwrap().watched);
    let mut rx = store.subscribe();
    let o = Opening { writable: vec![dir.join("elsewhere")], ..Default::default() };
    store.open_session("s3", o).unwrap();
    let c = wait_for(&mut rx, "unwatched");
    assert_eq!(c.session, "s2");
    std::fs::write(&inside, NO_TMP).unwrap();
    std::fs::write(&outside, NO_TMP).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(allows(&store, "s1", "/tmp/x"), "the agent's write to its own policy is ignored");
    assert!(allows(&store, "s2", "/tmp/x"));
}

#[test]
fn a_reloaded_file_must_belong_to_the_owner() {
    let (_store, dir) = store();
    let file = dir.join("p.cedar");
    std::fs::write(&file, PERMIT_ALL).unwrap();
    let me = nix::unistd::getuid().as_raw();
    let err = read_owned(&file, me + 1).unwrap_err();
    assert!(err.contains("not to the session's owner"), "{err}");
    assert_eq!(read_owned(&file, me).unwrap(), PERMIT_ALL);
    assert!(read_owned(&dir, me).is_err());
}

#[test]
fn a_statement_contradicting_another_of_the_same_scope_is_refused() {
    let (store, _dir) = store();
    let o = Opening { sources: vec![src("p.cedar", PERMIT_ALL)], ..Default::default() };
    store.open_session("s1", o).unwrap();
    let allow = "permit (principal, action == Action::\"NetworkConnect\", resource == Host::\"api.openai.com\");";
    let deny = "forbid (principal,  action == Action::\"NetworkConnect\",\n  resource == Host::\"api.openai.com\");";
    store.edit("s1", &[allow.into()], &[]).unwrap();
    let before = store.get("s1").unwrap().generation;
    let e = store.edit("s1", &[deny.into()], &[]).unwrap_err();
    assert!(e[0].message.contains(CONFLICTS) && e[0].message.contains("api.openai.com"), "{e:?}");
    // Within one runtime layer too, as the API replaces it.
    let both = format!("{allow}\n{}", deny.replace("openai", "other"));
    assert!(store.set_layer("s1", Layer::Runtime, vec![src("runtime", &both)], None).is_ok());
    let e = store.set_layer("s1", Layer::Runtime, vec![src("runtime", &format!("{allow}\n{deny}"))], None).unwrap_err();
    assert!(e[0].message.contains(CONFLICTS), "{e:?}");
    // A forbid of a different scope is no conflict; comments do not count.
    store
        .edit(
            "s1",
            &["// why\nforbid (principal, action == Action::\"NetworkConnect\", resource == Host::\"x.test\");".into()],
            &[],
        )
        .unwrap();
    assert!(store.get("s1").unwrap().generation > before);
}

#[test]
fn protect_host_is_a_layer_of_every_policy_unless_turned_off() {
    let (store, _dir) = store();
    let writes = |key: &str, path: &str| {
        let c = store.get(key).unwrap();
        let file = crate::resource::Resource::File(path.into());
        c.engine.authorize("claude", crate::engine::Action::FileOpenReadWrite, &file, &BTreeMap::new())
    };
    // A session's own policy that permits everything still gets it.
    let own = Opening { sources: vec![src("p.cedar", PERMIT_ALL)], ..Default::default() };
    store.open_session("own", own).unwrap();
    let d = writes("own", "/w/.git/hooks/pre-commit");
    assert_eq!((d.allow, d.reasons), (false, vec!["protect-host".to_owned()]));
    assert!(store.get("own").unwrap().sources.last().is_some_and(|s| s.name == PROTECT_HOST));
    // It cannot be removed like a statement of the session's own.
    let e = store.edit("own", &[], &["protect-host".into()]).unwrap_err();
    assert!(e[0].message.contains("protect-host layer"), "{e:?}");
    assert!(!writes("own", "/w/.envrc").allow);
    // Saving the policy's text does not copy the layer into it.
    let (_, text, _, _) = store.persist("own", None).unwrap();
    assert!(!text.contains("protect-host"), "{text}");
    assert!(!writes("own", "/w/.envrc").allow);
    // Only a session opened without it lacks it, with its own policy or the default's.
    for (key, sources) in [("off", vec![src("p.cedar", PERMIT_ALL)]), ("off-default", vec![])] {
        store.open_session(key, Opening { sources, unprotected: true, ..Default::default() }).unwrap();
        let d = writes(key, "/w/.git/hooks/pre-commit");
        assert!(d.allow, "{key}: {d:?}");
        assert!(!store.get(key).unwrap().sources.iter().any(|s| s.name == PROTECT_HOST), "{key}");
    }
    // The default's own copy of the fragment is that layer, not a second one.
    assert_eq!(store.get(DEFAULT).unwrap().sources.iter().filter(|s| s.name == PROTECT_HOST).count(), 1);
}
