//! The capture receiver in-process on a loopback port: complete, resumed, repeated and refused
//! uploads, as edge boxes send them.

use std::path::Path;

use defect_central::receiver::{self, COMPLETE, LENGTH, OFFSET, SHA256};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A receiver serving a temporary folder on a free loopback port.
struct Server {
    dir: tempfile::TempDir,
    address: std::net::SocketAddr,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let store = dir.path().to_owned();
        tokio::spawn(async move { receiver::serve(listener, &store).await });
        Server { dir, address }
    }

    fn store(&self) -> &Path {
        self.dir.path()
    }

    /// Sends one request and returns the status code and the response head, lower-cased.
    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(self.address).await.expect("connect");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: receiver\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("send head");
        stream.write_all(body).await.expect("send body");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let response = String::from_utf8_lossy(&response).to_lowercase();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"));
        (status, response)
    }

    async fn put(
        &self,
        file: &str,
        offset: u64,
        whole: &[u8],
        part: &[u8],
        sha: &str,
    ) -> (u16, String) {
        let headers = [
            (OFFSET, offset.to_string()),
            (LENGTH, whole.len().to_string()),
            (SHA256, sha.to_owned()),
        ];
        self.request(
            "PUT",
            &format!("/v1/capture/station-1/{file}"),
            &headers,
            part,
        )
        .await
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn a_complete_upload_is_stored_and_sending_it_again_writes_nothing() {
    let server = Server::start().await;
    let image = b"a captured frame".to_vec();
    let (status, _) = server.put("a.jpg", 0, &image, &image, &sha(&image)).await;
    assert_eq!(status, 201);
    let stored = server.store().join("station-1/a.jpg");
    assert_eq!(std::fs::read(&stored).expect("stored"), image);

    let (status, head) = server
        .request("HEAD", "/v1/capture/station-1/a.jpg", &[], b"")
        .await;
    assert_eq!(status, 200);
    assert!(head.contains(&format!("{COMPLETE}: 1")), "{head}");
    assert!(
        head.contains(&format!("{OFFSET}: {}", image.len())),
        "{head}"
    );

    let (status, _) = server.put("a.jpg", 0, &image, &image, &sha(&image)).await;
    assert_eq!(status, 200, "the same object again is accepted");
    let other = b"other content".to_vec();
    let (status, _) = server.put("a.jpg", 0, &other, &other, &sha(&other)).await;
    assert_eq!(status, 409, "other content under a held name is refused");
    assert_eq!(std::fs::read(&stored).expect("stored"), image);
}

#[tokio::test]
async fn a_cut_upload_is_kept_hidden_and_resumes_from_its_offset() {
    let server = Server::start().await;
    let image: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let digest = sha(&image);
    let (status, head) = server
        .put("b.jpg", 0, &image, &image[..4_000], &digest)
        .await;
    assert_eq!(status, 202, "{head}");
    assert!(head.contains(&format!("{OFFSET}: 4000")), "{head}");
    assert!(!server.store().join("station-1/b.jpg").exists());

    let (status, head) = server
        .request("HEAD", "/v1/capture/station-1/b.jpg", &[], b"")
        .await;
    assert_eq!(status, 200);
    assert!(head.contains(&format!("{COMPLETE}: 0")), "{head}");
    assert!(head.contains(&format!("{OFFSET}: 4000")), "{head}");

    let (status, head) = server
        .put("b.jpg", 1_000, &image, &image[1_000..], &digest)
        .await;
    assert_eq!(
        status, 409,
        "a resume from the wrong offset is refused: {head}"
    );
    assert!(head.contains(&format!("{OFFSET}: 4000")), "{head}");

    let (status, _) = server
        .put("b.jpg", 4_000, &image, &image[4_000..], &digest)
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        std::fs::read(server.store().join("station-1/b.jpg")).expect("stored"),
        image
    );
    assert!(!server.store().join("station-1/.b.jpg.part").exists());
}

#[tokio::test]
async fn a_wrong_hash_or_a_name_outside_the_store_is_refused() {
    let server = Server::start().await;
    let image = b"frame".to_vec();
    let (status, _) = server
        .put("c.jpg", 0, &image, &image, &sha(b"something else"))
        .await;
    assert_eq!(status, 422);
    assert!(!server.store().join("station-1/c.jpg").exists());
    assert!(!server.store().join("station-1/.c.jpg.part").exists());

    let headers = [
        (OFFSET, "0".to_owned()),
        (LENGTH, image.len().to_string()),
        (SHA256, sha(&image)),
    ];
    for path in [
        "/v1/capture/station-1/.hidden",
        "/v1/capture/..%2F..%2Fetc/x.jpg",
    ] {
        let (status, head) = server.request("PUT", path, &headers, &image).await;
        assert_eq!(status, 400, "{path}: {head}");
    }
    let (status, _) = server
        .request("HEAD", "/v1/capture/station-1/none.jpg", &[], b"")
        .await;
    assert_eq!(status, 404);
}
