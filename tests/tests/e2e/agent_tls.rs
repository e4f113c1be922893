//! The agent connects to a broker that requires TLS, a client certificate and a password,
//! with certificates made by openssl for the test.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use defect_e2e::agent_process::{AgentProcess, AgentSettings};
use defect_e2e::broker::{Mosquitto, free_port};
use defect_e2e::subscriber::{Subscriber, Version};

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

#[test]
fn the_agent_publishes_over_tls_with_a_client_certificate_and_a_password() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
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
