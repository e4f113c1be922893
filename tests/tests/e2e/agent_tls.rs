//! Both daemons connect to a broker that requires TLS, a client certificate and a password,
//! with certificates made by openssl for the test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::publisher::OwnRepo;
use defect_e2e::repo_server::RepoServer;
use defect_e2e::subscriber::{Subscriber, Version};
use defect_e2e::updater_box::{BoxSettings, UpdaterBox};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    // Extensions make both X.509 v3 certificates, which rustls requires.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &pem,
            ],
        );
    }
}

/// A broker whose TLS listener requires a client certificate and the password of user
/// `vision` (`s3cret`), and whose plain loopback listener (the second port) lets the test's
/// subscriber in.
fn tls_broker(dir: &Path) -> (Mosquitto, u16) {
    make_certificates(dir);
    let passwords = dir.join("passwords");
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["vision", "s3cret"])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    std::fs::write(dir.join("password"), "s3cret\n").expect("password file");
    let plain = free_port();
    let broker = Mosquitto::with_config(&format!(
        "per_listener_settings true\npersistence false\n\
         listener {{port}} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n\
         cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n\
         listener {plain} 127.0.0.1\nallow_anonymous true\n",
        pw = passwords.display(),
        d = dir.display(),
    ));
    (broker, plain)
}

#[test]
fn the_agent_publishes_over_tls_with_a_client_certificate_and_a_password() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let (broker, plain) = tls_broker(dir);
    let mut settings = AgentSettings::new(broker.port);
    settings.mqtt_extra = format!(
        "username = \"vision\"\npassword_file = {:?}\n[mqtt.tls]\nca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        dir.join("password"),
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    );
    // The subscriber listens on the broker's plain loopback listener.
    let watcher = Subscriber::start(plain, &format!("{}/status", settings.prefix), Version::V311);
    let agent = AgentProcess::start(settings);
    assert!(
        watcher.wait_until(Duration::from_secs(60), |m| {
            m.last().is_some_and(|l| l.json()["state"] == "online")
        }),
        "the agent never came online over TLS; log:\n{}",
        agent.log()
    );
}

#[test]
fn the_updater_publishes_its_status_over_tls_with_a_client_certificate_and_a_password() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let (broker, plain) = tls_broker(dir);
    let repo = OwnRepo::init();
    let server = RepoServer::start(&repo.repo);
    let edge = UpdaterBox::new(&BoxSettings::new(&server.url("/"), &repo.first_root()));
    let prefix = "acme/plant1/assembly/line3/vision";
    edge.append_config(&format!(
        "[mqtt]\nport = {}\nclient_id = \"updater-tls\"\ntopic_prefix = \"{prefix}\"\n\
         username = \"vision\"\npassword = \"s3cret\"\n\
         [mqtt.tls]\nca_file = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        broker.port,
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    ));
    let watcher = Subscriber::start(plain, &format!("{prefix}/updater"), Version::V311);
    let log = edge.path().join("daemon.log");
    let mut daemon = edge.spawn("run", &log);
    let idle = watcher.wait_until(Duration::from_secs(60), |m| {
        m.last().is_some_and(|l| l.json()["state"] == "idle")
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        idle,
        "the updater never published its status over TLS; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
