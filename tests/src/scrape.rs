//! A daemon's metrics endpoint as a test reads it.
//!
//! This module owns a plain HTTP/1.0 GET over a std `TcpStream` (the tests need no HTTP client
//! crate for it), waiting for an endpoint to answer as expected, the Prometheus text format
//! parsed into samples, and `promtool check metrics` (Debian package `prometheus`), the
//! Prometheus project's own check of an exposition.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The `Content-Type` header (empty when absent).
    pub content_type: String,
    /// The body as text.
    pub body: String,
}

/// `GET path` from `address` (`host:port`), with an `Accept` header when given. An error means
/// nothing answered (for example, the listener is not up yet).
pub fn get(address: &str, path: &str, accept: Option<&str>) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n{accept}\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    let content_type = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    Ok(Response {
        status,
        content_type,
        body: body.to_owned(),
    })
}

/// GETs `path` until the answer satisfies `done`, and returns that answer; panics with the
/// last answer (or error) after `timeout`.
pub fn wait_for(
    address: &str,
    path: &str,
    timeout: Duration,
    done: impl Fn(&Response) -> bool,
) -> Response {
    let until = Instant::now() + timeout;
    loop {
        let answer = get(address, path, None);
        if let Ok(response) = &answer
            && done(response)
        {
            return response.clone();
        }
        assert!(
            Instant::now() < until,
            "GET {address}{path} did not answer as expected within {timeout:?}; last answer: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, with its `_total`, `_bucket`, `_count` or `_sum` suffix.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of an exposition in the Prometheus text format.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses the sample lines (comments and blank lines are skipped); panics on a line that
    /// is not a sample.
    pub fn parse(text: &str) -> Samples {
        Samples(
            text.lines()
                .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
                .map(|line| parse_sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}")))
                .collect(),
        )
    }

    /// The sum of the samples named `name` whose labels include every pair of `labels`;
    /// `None` when no sample matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }
}

/// `name{label="value",...} value [timestamp]`, with `\\`, `\"` and `\n` escapes in values.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn promtool_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("promtool"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not installed; the metrics tests check every exposition with it \
                 (apt-get install -y prometheus)"
            )
        })
}

/// Runs `promtool check metrics` on `text`; `Err` carries its complaints.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool_binary())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics: {:?}\n{}{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_parsed_with_their_labels_and_summed_by_label_subset() {
        let samples = Samples::parse(
            "# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"uo,te\"} 2\nx_total{a=\"1\",b=\"c\"} 3\ny 0.5\nh_bucket{le=\"+Inf\"} 4\n",
        );
        assert_eq!(samples.sum("x_total", &[("a", "1")]), Some(5.0));
        assert_eq!(samples.sum("x_total", &[("b", "q\"uo,te")]), Some(2.0));
        assert_eq!(samples.sum("y", &[]), Some(0.5));
        assert_eq!(samples.sum("h_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(samples.sum("x_total", &[("a", "2")]), None);
    }
}
