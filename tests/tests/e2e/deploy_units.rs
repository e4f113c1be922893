//! What the Debian package installs on an edge box fits together and holds up: the systemd
//! units pass `systemd-analyze verify` and score "OK" or better in `systemd-analyze security`;
//! the sysusers and tmpfiles files make the users, groups and shared folders the units and the
//! sample configurations expect; the maintainer script's store seeding writes a store the agent
//! and the updater read; the package metadata names files that exist; both daemons, traced
//! with strace, make only system calls their unit's filter allows and never map writable code;
//! and the broker ACL, loaded by a real Mosquitto, lets the real agent publish while a PLC may
//! only read.
//!
//! Needs `systemd` (systemd-analyze, systemd-sysusers, systemd-tmpfiles), `strace` and
//! `mosquitto` installed; the sysusers/tmpfiles test needs root (it chowns, as the package
//! does), so it is ignored unless asked for (`-- --ignored needs_root`, as `.ci/run` does).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use defect_e2e::agent_process::{AgentProcess, AgentSettings};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::updater_box::{BoxSettings, EdgeLine, describe};
use defect_e2e::{binary, bundles, repo_root, sample_frames};
use defect_models::store::{Pointer, Store};

const UNITS: [(&str, &str); 2] = [
    ("defect-agent.service", "defect-agent"),
    ("model-updater.service", "model-updater"),
];

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (is it installed?): {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A unit file's settings: `(section, key)` to every value given, in order.
fn unit_settings(path: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut section = String::new();
    let mut settings: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            settings
                .entry((section.clone(), key.to_owned()))
                .or_default()
                .push(value.to_owned());
        }
    }
    settings
}

fn setting(settings: &BTreeMap<(String, String), Vec<String>>, key: &str) -> Vec<String> {
    settings
        .get(&("Service".to_owned(), key.to_owned()))
        .cloned()
        .unwrap_or_default()
}

fn one_setting(settings: &BTreeMap<(String, String), Vec<String>>, key: &str) -> String {
    let values = setting(settings, key);
    assert_eq!(values.len(), 1, "{key}= should be given once: {values:?}");
    values[0].clone()
}

/// `systemd-analyze verify` checks a unit's syntax, its dependencies and that every command
/// it runs exists and is executable. On a test machine the units' `/usr/bin/...` binaries are
/// not installed, so the test verifies copies whose commands name the binaries this test run
/// built instead; nothing else is changed, and any warning (an unknown key, a bad value, which
/// `verify` reports but does not fail on) fails the test.
#[test]
fn both_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut copies = Vec::new();
    for (unit, program) in UNITS {
        let original = std::fs::read_to_string(deploy("systemd").join(unit)).expect("unit");
        let installed = format!("/usr/bin/{program} ");
        assert!(
            original.contains(&format!("ExecStart={installed}")),
            "{unit} should run {installed}"
        );
        let built = format!("{} ", binary(program).display());
        let copy = dir.path().join(unit);
        std::fs::write(&copy, original.replace(&installed, &built)).expect("write copy");
        copies.push(copy);
    }
    let output = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copies));
    assert!(
        output.status.success() && text(&output).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&output)
    );
}

/// The overall exposure `systemd-analyze security` gives a unit file: (score, label).
fn exposure(unit: &Path) -> (f64, String) {
    let output = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit));
    let report = text(&output);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure for {}:\n{report}", unit.display()));
    let (_, verdict) = line
        .rsplit_once(": ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let mut words = verdict.split_whitespace();
    let score = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    let label = words.next().unwrap_or_default().to_owned();
    (score, label)
}

/// systemd's bands: below 1.0 SAFE (0.0 PERFECT), below 5.0 OK, then MEDIUM, EXPOSED, UNSAFE.
#[test]
fn both_units_score_ok_or_better_in_systemd_analyze_security() {
    for (unit, _) in UNITS {
        let (score, label) = exposure(&deploy("systemd").join(unit));
        println!("{unit}: exposure {score} {label}");
        assert!(
            score < 5.0 && ["OK", "SAFE", "PERFECT"].contains(&label.as_str()),
            "{unit}: exposure {score} {label}, above OK"
        );
    }
}

/// The units, the package's folders and the sample configurations name the same paths: the
/// agent's state is its StateDirectory, the store it reads is the one the updater may write,
/// its hot folders are writable, the health file is where both look for it, and the updater
/// waits for the root of trust its configuration names.
#[test]
fn the_units_and_the_sample_configurations_name_the_same_paths() {
    let agent_unit = unit_settings(&deploy("systemd/defect-agent.service"));
    let updater_unit = unit_settings(&deploy("systemd/model-updater.service"));
    let agent = defect_agent::config::Config::load(&deploy("defect-agent.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let updater = model_updater::config::Config::load(&deploy("model-updater.toml"))
        .unwrap_or_else(|e| panic!("{e}"));

    for (settings, program, file) in [
        (&agent_unit, "defect-agent", "defect-agent.toml"),
        (&updater_unit, "model-updater", "model-updater.toml"),
    ] {
        let config = format!("--config /etc/defect-agent/{file}");
        assert_eq!(
            one_setting(settings, "ExecStart"),
            format!("/usr/bin/{program} run {config}")
        );
        assert_eq!(
            one_setting(settings, "ExecStartPre"),
            format!("/usr/bin/{program} check-config {config}")
        );
    }

    let state = Path::new("/var/lib").join(one_setting(&agent_unit, "StateDirectory"));
    assert_eq!(agent.agent.state_dir, state);
    let store = agent.agent.model_store.clone().expect("agent.model_store");
    assert_eq!(store, updater.paths.model_store);
    assert_eq!(
        setting(&updater_unit, "ReadWritePaths"),
        [store.display().to_string()]
    );
    let health = agent.agent.model_health_file.clone().expect("health file");
    assert_eq!(health.parent(), Some(state.as_path()));
    assert_eq!(health, updater.trial.health_file);
    let writable: Vec<PathBuf> = setting(&agent_unit, "ReadWritePaths")
        .iter()
        .map(|p| PathBuf::from(p.trim_start_matches('-')))
        .collect();
    for folder in agent.stations.iter().filter_map(|s| s.hot_folder.as_ref()) {
        for path in std::iter::once(&folder.path).chain(folder.move_to.as_ref()) {
            assert!(
                writable.iter().any(|w| path.starts_with(w)),
                "{} is not writable under the unit ({writable:?})",
                path.display()
            );
        }
    }
    assert_eq!(
        updater.paths.state_dir,
        Path::new("/var/lib").join(one_setting(&updater_unit, "StateDirectory"))
    );
    assert_eq!(
        updater_unit.get(&("Unit".to_owned(), "ConditionPathExists".to_owned())),
        Some(&vec![updater.repository.trusted_root.display().to_string()])
    );
}

/// The system calls a unit's `SystemCallFilter=` lines allow: the allow list's groups and
/// names, less every `~` deny list, with groups expanded by `systemd-analyze syscall-filter`.
fn allowed_syscalls(unit: &Path) -> BTreeSet<String> {
    fn expand(name: &str, into: &mut BTreeSet<String>) {
        if !name.starts_with('@') {
            into.insert(name.to_owned());
            return;
        }
        let output = run(Command::new("systemd-analyze").args(["syscall-filter", name]));
        assert!(
            output.status.success(),
            "syscall-filter {name}: {}",
            text(&output)
        );
        let listing = String::from_utf8_lossy(&output.stdout).into_owned();
        for entry in listing.lines().skip(1).map(str::trim) {
            if !entry.is_empty() && !entry.starts_with('#') {
                expand(entry, into);
            }
        }
    }
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for filter in setting(&unit_settings(unit), "SystemCallFilter") {
        let (list, names) = match filter.strip_prefix('~') {
            Some(names) => (&mut denied, names),
            None => (&mut allowed, filter.as_str()),
        };
        for name in names.split_whitespace() {
            expand(name, list);
        }
    }
    assert!(!allowed.is_empty(), "{} has no allow list", unit.display());
    allowed.difference(&denied).cloned().collect()
}

/// Runs `command` under `strace -f` and returns its output and the trace's lines.
fn traced(command: &Command, trace: &Path) -> (Output, Vec<String>) {
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-qq", "-o"])
        .arg(trace)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => strace.env(key, value),
            None => strace.env_remove(key),
        };
    }
    let output = run(&mut strace);
    let lines = std::fs::read_to_string(trace)
        .expect("trace")
        .lines()
        .map(str::to_owned)
        .collect();
    (output, lines)
}

/// What a trace shows against a unit: system calls outside its filter, and mappings that
/// `MemoryDenyWriteExecute=` refuses (writable and executable at once, or made executable
/// later; the loader's read-only executable mappings of libraries are fine).
fn violations(unit: &Path, trace: &[String]) -> (BTreeSet<String>, Vec<String>) {
    let allowed = allowed_syscalls(unit);
    let mut outside = BTreeSet::new();
    let mut writable_code = Vec::new();
    for line in trace {
        // `PID name(args…` or `PID <... name resumed> …`; signals and exits start otherwise.
        let call = line
            .split_once(' ')
            .map(|(_, rest)| rest.trim_start())
            .map(|rest| rest.strip_prefix("<... ").unwrap_or(rest))
            .and_then(|rest| rest.split(['(', ' ']).next())
            .filter(|name| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        let Some(call) = call else { continue };
        if !allowed.contains(call) {
            outside.insert(call.to_owned());
        }
        let exec = line.contains("PROT_EXEC");
        if (call == "mmap" && exec && line.contains("PROT_WRITE"))
            || (call.ends_with("mprotect") && exec)
        {
            writable_code.push(line.clone());
        }
    }
    (outside, writable_code)
}

/// Both daemons at work under strace: the agent's demo (hot folder, inference threads, result
/// log, MQTT, the same code `run` uses) and one update check of the updater that downloads,
/// installs, tries and commits a new version with the real agent. Every system call they make
/// is one their unit's `SystemCallFilter=` allows (a refused one would fail with EPERM on the
/// box), and nothing maps memory writable and executable (`MemoryDenyWriteExecute=yes`).
#[test]
fn both_daemons_make_only_system_calls_their_units_allow() {
    let dir = tempfile::tempdir().expect("tempdir");

    let mut demo = Command::new(binary("defect-agent"));
    demo.arg("demo");
    let (output, trace) = traced(&demo, &dir.path().join("agent.trace"));
    assert!(output.status.success(), "demo: {}", text(&output));
    let agent_unit = deploy("systemd/defect-agent.service");
    let (outside, writable_code) = violations(&agent_unit, &trace);
    assert!(
        outside.is_empty(),
        "the agent calls {outside:?}, outside its unit's filter"
    );
    assert!(writable_code.is_empty(), "{writable_code:#?}");

    let repo = OwnRepo::init();
    let sha = repo.add(&bundles::with_model_version(2), &["--lines", "line3"]);
    let server = RepoServer::start(&repo.repo);
    let line = EdgeLine::start(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let config = line.edge.config.display().to_string();
    let check = line.edge.command(&["check", "--config", &config]);
    let (output, trace) = traced(&check, &dir.path().join("updater.trace"));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(line.edge.current().0, sha);
    let updater_unit = deploy("systemd/model-updater.service");
    let (outside, writable_code) = violations(&updater_unit, &trace);
    assert!(
        outside.is_empty(),
        "the updater calls {outside:?}, outside its unit's filter"
    );
    assert!(writable_code.is_empty(), "{writable_code:#?}");
}

/// Whether this test runs as root (the owner of a file it just made).
fn running_as_root() -> bool {
    let probe = tempfile::NamedTempFile::new().expect("temp file");
    probe.as_file().metadata().expect("stat").uid() == 0
}

/// `name`'s id in `<root>/etc/<file>` (passwd or group), and the group's members.
fn entry(root: &Path, file: &str, name: &str) -> (u32, Vec<String>) {
    let text = std::fs::read_to_string(root.join("etc").join(file)).expect("etc file");
    let fields: Vec<&str> = text
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .unwrap_or_else(|| panic!("no {name} in {file}:\n{text}"));
    let id = fields[2].parse().expect("numeric id");
    let members = fields
        .get(3)
        .filter(|_| file == "group")
        .map(|m| {
            m.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (id, members)
}

/// `systemd-sysusers` and `systemd-tmpfiles` applied to an empty root, as the package's
/// postinst applies them to the box: the users and groups the units run as exist with the
/// memberships that let each read what it must, and the shared folders get exact owners and
/// modes (the model store writable by the updater only, readable by the agent, setgid).
#[test]
#[ignore = "needs root (makes users, chowns folders); run with -- --ignored needs_root"]
fn needs_root_sysusers_and_tmpfiles_make_the_users_and_folders_the_units_expect() {
    assert!(
        running_as_root(),
        "making users and chowning folders needs root"
    );
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("etc")).expect("etc");
    let output = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy("sysusers.d/defect-agent.conf")));
    assert!(output.status.success(), "sysusers: {}", text(&output));
    let output = run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(deploy("tmpfiles.d/defect-agent.conf")));
    assert!(
        output.status.success() && text(&output).trim().is_empty(),
        "tmpfiles: {}",
        text(&output)
    );

    let uid = |name: &str| entry(root.path(), "passwd", name).0;
    let gid = |name: &str| entry(root.path(), "group", name).0;
    let members = |name: &str| entry(root.path(), "group", name).1;
    for (unit, _) in UNITS {
        let settings = unit_settings(&deploy("systemd").join(unit));
        uid(&one_setting(&settings, "User"));
        gid(&one_setting(&settings, "Group"));
        for group in setting(&settings, "SupplementaryGroups") {
            gid(&group);
        }
    }
    let mut store_readers = members("defect-models");
    store_readers.sort();
    assert_eq!(store_readers, ["defect-agent", "model-updater"]);
    assert_eq!(members("defect-frames"), ["defect-agent"]);

    let folder = |path: &str| {
        let meta = std::fs::metadata(root.path().join(path.trim_start_matches('/')))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777)
    };
    assert_eq!(folder("/var/lib/defect-agent"), (0, 0, 0o755));
    let store = (uid("model-updater"), gid("defect-models"), 0o2750);
    for path in ["", "/bundles", "/staging"] {
        assert_eq!(
            folder(&format!("/var/lib/defect-agent/models{path}")),
            store
        );
    }
    assert_eq!(
        folder("/var/lib/defect-agent/incoming"),
        (uid("defect-agent"), gid("defect-frames"), 0o2770)
    );
}

/// The postinst's seeding helper on an empty store and on a box's own store: the shipped
/// bundle becomes `factory`, and `current` only when there is none, in the layout the
/// agent and the updater read.
#[test]
fn the_seeding_helper_makes_the_shipped_bundle_factory_and_current_only_when_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("models");
    let seed = || {
        let output = run(Command::new("sh")
            .arg(deploy("debian/seed-model-store"))
            .arg(&root)
            .arg(defect_e2e::shipped_bundle()));
        assert!(
            output.status.success(),
            "seed-model-store: {}",
            text(&output)
        );
    };
    seed();
    let store = Store::at(&root);
    let shipped = store
        .pointer(Pointer::Factory)
        .expect("factory")
        .expect("set");
    let bundle = store
        .load(Pointer::Current)
        .expect("load")
        .expect("current");
    assert_eq!(bundle.digest(), shipped);
    assert_eq!(bundle.manifest().name, "surface-classifier");
    assert!(
        std::fs::read_dir(root.join("staging"))
            .expect("staging")
            .next()
            .is_none()
    );
    seed();
    assert_eq!(
        store.pointer(Pointer::Current).expect("current"),
        Some(shipped.clone())
    );

    // A box whose updater installed its own model keeps it.
    let own = Store::open(&root)
        .expect("store")
        .add(&bundles::with_model_version(7))
        .expect("add");
    Store::open(&root)
        .expect("store")
        .activate(&own)
        .expect("activate");
    seed();
    assert_eq!(store.pointer(Pointer::Current).expect("current"), Some(own));
    assert_eq!(
        store.pointer(Pointer::Factory).expect("factory"),
        Some(shipped)
    );
}

/// `[package.metadata.deb]` of a workspace package's Cargo.toml, as cargo reads it.
fn deb_metadata(package: &str) -> serde_json::Value {
    let output = run(Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(repo_root().join("Cargo.toml")));
    assert!(output.status.success(), "cargo metadata: {}", text(&output));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("no package {package}"))["metadata"]["deb"]
        .clone()
}

/// The package installs what the units run and the maintainer scripts use, from files that
/// exist; its maintainer scripts are executable, parse, and carry no #DEBHELPER# token.
#[test]
fn the_debian_package_installs_what_the_units_and_scripts_name() {
    let deb = deb_metadata("defect-agent");
    let agent_dir = repo_root().join("agent");
    let mut installed = Vec::new();
    for asset in deb["assets"].as_array().expect("assets") {
        let source = asset[0].as_str().expect("source");
        let dest = asset[1].as_str().expect("dest");
        if !source.starts_with("target/release/") {
            let path = agent_dir.join(source);
            let exists = match source.strip_suffix("/*") {
                Some(folder) => agent_dir.join(folder).is_dir(),
                None => path.is_file(),
            };
            assert!(exists, "asset {source} does not exist");
        }
        let name = Path::new(source).file_name().expect("name");
        let target = if dest.ends_with('/') {
            format!("/{dest}{}", name.to_string_lossy())
        } else {
            format!("/{dest}")
        };
        installed.push(target);
    }
    for expected in [
        "/usr/bin/defect-agent",
        "/usr/bin/model-updater",
        "/lib/systemd/system/defect-agent.service",
        "/lib/systemd/system/model-updater.service",
        "/usr/lib/sysusers.d/defect-agent.conf",
        "/usr/lib/tmpfiles.d/defect-agent.conf",
        "/usr/lib/defect-agent/seed-model-store",
        "/usr/share/defect-agent/surface-classifier.dmb",
        "/etc/defect-agent/defect-agent.toml",
        "/etc/defect-agent/model-updater.toml",
    ] {
        assert!(
            installed.iter().any(|i| i == expected),
            "{expected} not installed"
        );
    }
    let scripts = agent_dir.join(deb["maintainer-scripts"].as_str().expect("scripts"));
    let postinst = std::fs::read_to_string(scripts.join("postinst")).expect("postinst");
    for path in [
        "/usr/lib/defect-agent/seed-model-store",
        "/usr/share/defect-agent/surface-classifier.dmb",
    ] {
        assert!(postinst.contains(path), "postinst does not use {path}");
    }
    for script in ["postinst", "prerm", "postrm", "seed-model-store"] {
        let path = scripts.join(script);
        let mode = std::fs::metadata(&path)
            .expect("script")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
        let body = std::fs::read_to_string(&path).expect("script");
        assert!(body.starts_with("#!/bin/sh\n") && body.contains("\nset -e"));
        assert!(!body.contains("#DEBHELPER#"));
        let output = run(Command::new("sh").arg("-n").arg(&path));
        assert!(output.status.success(), "{script}: {}", text(&output));
    }
}

/// The edge package carries no central-server tool; the central server's package ships
/// `defect-central` where the re-signing unit runs it, from files that exist.
#[test]
fn defect_central_is_packaged_for_the_central_server_only() {
    let edge = deb_metadata("defect-agent");
    let edge_assets = edge["assets"].to_string();
    assert!(
        !edge_assets.contains("defect-central"),
        "the edge package ships defect-central: {edge_assets}"
    );
    let central = deb_metadata("defect-central");
    let central_dir = repo_root().join("central");
    let mut binaries = Vec::new();
    for asset in central["assets"].as_array().expect("assets") {
        let source = asset[0].as_str().expect("source");
        let dest = asset[1].as_str().expect("dest");
        match source.strip_prefix("target/release/") {
            Some(binary) => binaries.push(format!("/{dest}{binary}")),
            None => {
                let exists = match source.strip_suffix("/*") {
                    Some(folder) => central_dir.join(folder).is_dir(),
                    None => central_dir.join(source).is_file(),
                };
                assert!(exists, "asset {source} does not exist");
            }
        }
    }
    assert_eq!(binaries, ["/usr/bin/defect-central"]);
    let unit = unit_settings(&deploy("central/defect-resign-timestamp.service"));
    let exec = setting(&unit, "ExecStart");
    assert!(
        !exec.is_empty()
            && exec
                .iter()
                .all(|e| e.starts_with("/usr/bin/defect-central repo resign-timestamp ")),
        "{exec:?}"
    );
}

/// A real Mosquitto with the deploy snippet's settings: the lines of
/// deploy/central/mosquitto.conf above its first listener, with the test's password file and
/// the repository's ACL file, and a loopback listener of the test's.
fn broker_with_deploy_acl(dir: &Path, users: &[(&str, &str)]) -> Mosquitto {
    let passwords = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut command = Command::new("mosquitto_passwd");
        if i == 0 {
            command.arg("-c");
        }
        let output = run(command.arg("-b").arg(&passwords).args([user, password]));
        assert!(
            output.status.success(),
            "mosquitto_passwd: {}",
            text(&output)
        );
    }
    let snippet = std::fs::read_to_string(deploy("central/mosquitto.conf")).expect("snippet");
    let global: String = snippet
        .lines()
        .take_while(|l| !l.starts_with("listener"))
        .map(|l| format!("{l}\n"))
        .collect();
    let acl = deploy("central/mosquitto-acl.conf");
    let config = global
        .replace(
            "/etc/mosquitto/defect-agent.passwd",
            &passwords.display().to_string(),
        )
        .replace(
            "/etc/mosquitto/defect-agent.acl",
            &acl.display().to_string(),
        );
    assert!(config.contains("acl_file ") && config.contains(&acl.display().to_string()));
    Mosquitto::with_config(&format!(
        "{config}persistence false\nlistener {{port}} 127.0.0.1\n"
    ))
}

/// An MQTT 3.1.1 client logged in as one broker user; its incoming packets on a channel.
struct BrokerUser {
    name: String,
    client: rumqttc::Client,
    packets: mpsc::Receiver<rumqttc::Packet>,
}

const WAIT: Duration = Duration::from_secs(20);

impl BrokerUser {
    fn connect(port: u16, name: &str, password: &str) -> BrokerUser {
        let id = format!("{name}-{}", free_port());
        let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_credentials(name, password);
        let (client, mut connection) = rumqttc::Client::new(options, 16);
        let (tx, packets) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(packet)) => {
                        if tx.send(packet).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // A refused login or a lost broker ends the client: the test sees the
                    // channel close.
                    Err(_) => return,
                }
            }
        });
        let user = BrokerUser {
            name: name.to_owned(),
            client,
            packets,
        };
        match user.next() {
            rumqttc::Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => {}
            other => panic!("{name} could not log in: {other:?}"),
        }
        user
    }

    fn next(&self) -> rumqttc::Packet {
        self.packets
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("{}: no packet from the broker: {e}", self.name))
    }

    /// Subscribes with QoS 1 and waits for the broker's acknowledgement.
    fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .expect("queue subscribe");
        loop {
            if let rumqttc::Packet::SubAck(ack) = self.next() {
                assert!(
                    ack.return_codes
                        .iter()
                        .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                    "{} may not subscribe to {filter}: {ack:?}",
                    self.name
                );
                return;
            }
        }
    }

    /// Publishes with QoS 1 and waits for the broker's acknowledgement, which Mosquitto gives
    /// over MQTT 3.1.1 whether or not the ACL let the message through.
    fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.as_bytes())
            .expect("queue publish");
        while !matches!(self.next(), rumqttc::Packet::PubAck(_)) {}
    }

    /// Payloads received until `marker` arrives (the marker excluded).
    fn received_until(&self, marker: &str) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        loop {
            if let rumqttc::Packet::Publish(p) = self.next() {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                if payload == marker {
                    return seen;
                }
                seen.push((p.topic.clone(), payload));
            }
        }
    }
}

const PREFIX: &str = "acme/plant1/assembly/line3/vision";
const USERS: [(&str, &str); 4] = [
    ("vision-line3", "agent-secret"),
    ("updater-line3", "updater-secret"),
    ("plc-line3", "plc-secret"),
    ("ops", "ops-secret"),
];

/// Each user of the ACL publishes on topics it may and may not use; the line's PLC, reading
/// everything below the prefix, sees exactly the allowed ones. Mosquitto handles one message
/// after the other, so a message acknowledged before the next marker was published would
/// reach the PLC before that marker if the ACL had let it through.
#[test]
fn the_broker_acl_lets_each_user_publish_only_its_own_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker_with_deploy_acl(dir.path(), &USERS);
    let password = |name: &str| USERS.iter().find(|(u, _)| *u == name).expect("user").1;
    let plc = BrokerUser::connect(broker.port, "plc-line3", password("plc-line3"));
    plc.subscribe(&format!("{PREFIX}/#"));
    let updater = BrokerUser::connect(broker.port, "updater-line3", password("updater-line3"));
    updater.subscribe(&format!("{PREFIX}/updater/announce"));
    let ops = BrokerUser::connect(broker.port, "ops", password("ops"));
    let announce = format!("{PREFIX}/updater/announce");

    let cases: [(&str, &str, bool); 24] = [
        ("ops", "updater/approve", true),
        ("plc-line3", "updater/approve", false),
        ("vision-line3", "updater/approve", false),
        ("vision-line3", "status", true),
        ("vision-line3", "cam1/alarms/camera_quiet", true),
        ("vision-line3", "cam2/drift", true),
        ("vision-line3", "cam1/line", false),
        ("plc-line3", "cam1/line", true),
        ("plc-line3", "cam1/alarms/drift", false),
        ("vision-line3", "heartbeat", true),
        ("vision-line3", "model", true),
        ("vision-line3", "cam1/decision", true),
        ("vision-line3", "cam2/results", true),
        ("vision-line3", "cam9/decision", false),
        ("vision-line3", "updater", false),
        ("vision-line3", "updater/announce", false),
        ("updater-line3", "updater", true),
        ("updater-line3", "status", false),
        ("updater-line3", "cam1/decision", false),
        ("updater-line3", "updater/announce", false),
        ("plc-line3", "cam1/decision", false),
        ("plc-line3", "status", false),
        ("plc-line3", "updater/announce", false),
        ("ops", "cam1/decision", false),
    ];
    for (i, (name, topic, allowed)) in cases.into_iter().enumerate() {
        let user = BrokerUser::connect(broker.port, name, password(name));
        let payload = format!("{name} on {topic}");
        user.publish(&format!("{PREFIX}/{topic}"), &payload);
        let marker = format!("marker {i}");
        ops.publish(&announce, &marker);
        let seen = plc.received_until(&marker);
        assert_eq!(
            seen.iter().any(|(_, p)| *p == payload),
            allowed,
            "{name} publishing on {topic}: allowed should be {allowed}; the PLC saw {seen:?}"
        );
        let _ = user.client.disconnect();
    }
    // Ops' announcements reach the updater.
    assert_eq!(updater.received_until("marker 0"), []);

    // Without a password nobody gets in.
    let mut options = rumqttc::MqttOptions::new("anonymous", "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    let (_client, mut connection) = rumqttc::Client::new(options, 4);
    let refused = connection.iter().find_map(|e| match e {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => Some(ack.code),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => Some(code),
        _ => None,
    });
    assert_ne!(refused, Some(rumqttc::ConnectReturnCode::Success));
}

/// The real agent logged in as the ACL's agent user: the PLC sees its status, model,
/// heartbeat and the decision for a frame, so the ACL grants every topic the agent uses.
#[test]
fn the_real_agent_publishes_through_the_acl_and_the_plc_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker_with_deploy_acl(dir.path(), &USERS);
    let plc = BrokerUser::connect(broker.port, "plc-line3", "plc-secret");
    plc.subscribe(&format!("{PREFIX}/#"));
    std::fs::write(dir.path().join("password"), "agent-secret\n").expect("password file");
    let mut settings = AgentSettings::new(broker.port);
    settings.prefix = PREFIX.into();
    settings.mqtt_extra = format!(
        "username = \"vision-line3\"\npassword_file = {:?}\n",
        dir.path().join("password")
    );
    settings.extra_toml = "[monitor]\ncamera_quiet_s = 1\n".into();
    let agent = AgentProcess::start(settings);
    let (frame, _) = sample_frames().into_iter().next().expect("a sample frame");
    let name = format!(
        "part-42.{}",
        frame.extension().expect("extension").to_string_lossy()
    );
    let staged = dir.path().join(&name);
    std::fs::copy(&frame, &staged).expect("copy frame");
    let mut dropped = false;
    let mut needed: Vec<String> = ["status", "model", "heartbeat", "cam1/decision"]
        .iter()
        .map(|t| format!("{PREFIX}/{t}"))
        .collect();
    let until = Instant::now() + Duration::from_secs(120);
    while !needed.is_empty() {
        assert!(
            Instant::now() < until,
            "the PLC never saw {needed:?}; agent log:\n{}",
            agent.log()
        );
        let Ok(rumqttc::Packet::Publish(p)) = plc.packets.recv_timeout(Duration::from_secs(1))
        else {
            continue;
        };
        if p.topic.ends_with("/status") && !dropped {
            // Online: the frame goes in, renamed into place as a camera does.
            std::fs::rename(&staged, agent.hot_folder("cam1").join(&name)).expect("drop frame");
            dropped = true;
        }
        if p.topic.ends_with("/decision") {
            let decision: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
            assert_eq!(decision["part"], 42, "{decision}");
        }
        needed.retain(|t| *t != p.topic);
    }

    // The PLC says the line runs; the agent reads it through the ACL, and publishes its
    // camera alarm a second later since no frame follows.
    plc.publish(&format!("{PREFIX}/cam1/line"), "running");
    let alarm = format!("{PREFIX}/cam1/alarms/camera_quiet");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < until,
            "the PLC never saw the camera alarm; agent log:\n{}",
            agent.log()
        );
        let Ok(rumqttc::Packet::Publish(p)) = plc.packets.recv_timeout(Duration::from_secs(1))
        else {
            continue;
        };
        if p.topic == alarm {
            let state: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
            if state["active"] == 1 {
                break;
            }
        }
    }
}
