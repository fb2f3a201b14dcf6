//! Reading a process's Prometheus metrics the way Prometheus does: an HTTP
//! GET of `/metrics`, then the text format parsed into samples. A plain
//! `TcpStream` is enough (the exporter speaks HTTP/1.1 and closes), so the
//! tests need no HTTP client.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// The exposition as served, for messages.
    pub text: String,
}

impl Metrics {
    /// Parses the Prometheus text format (comments are kept only in `text`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut samples = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            samples.push(parse_line(line).ok_or_else(|| format!("not a sample line: {line:?}"))?);
        }
        Ok(Self { samples, text: text.to_string() })
    }

    /// Whether the family `name` is declared (a `# TYPE name ...` line).
    pub fn has(&self, name: &str) -> bool {
        self.text.lines().any(|l| l.strip_prefix("# TYPE ").and_then(|r| r.split_whitespace().next()) == Some(name))
    }

    /// The sum of the samples called `name` whose labels include every pair
    /// of `labels` (0 when there are none): `sum(name{labels})` in PromQL.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }

    /// The distinct values of label `label` on samples called `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> =
            self.samples.iter().filter(|s| s.name == name).filter_map(|s| s.labels.get(label).cloned()).collect();
        v.sort();
        v.dedup();
        v
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    // An optional timestamp may follow the value.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = &after[1 + end + 1..];
    }
}

/// `GET /metrics` from `addr` (host:port); panics unless it answers 200.
pub fn scrape(addr: &str) -> Metrics {
    let fetch = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let response = fetch().unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200 "), "scraping {addr}: {head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "scraping {addr}: {head}");
    Metrics::parse(body).unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP a_total help\n# TYPE a_total counter\na_total{code=\"OK\",rpc=\"Search\"} 3\n\
                    a_total{code=\"InvalidArgument\",rpc=\"Search\"} 1\na_total{code=\"OK\",rpc=\"Get\"} 2\n\
                    b 4.5 1700000000\nc{x=\"q\\\"uote,d}\"} 7\nh_bucket{le=\"+Inf\"} 9\n";
        let m = Metrics::parse(text).unwrap();
        assert!(m.has("a_total") && !m.has("b"));
        assert_eq!(m.sum("a_total", &[("rpc", "Search")]), 4.0);
        assert_eq!(m.sum("a_total", &[("code", "OK")]), 5.0);
        assert_eq!(m.sum("a_total", &[("rpc", "Nope")]), 0.0);
        assert_eq!(m.sum("b", &[]), 4.5);
        assert_eq!(m.sum("c", &[("x", "q\"uote,d}")]), 7.0);
        assert_eq!(m.sum("h_bucket", &[("le", "+Inf")]), 9.0);
        assert_eq!(m.label_values("a_total", "rpc"), ["Get", "Search"]);
        assert!(Metrics::parse("garbage{").is_err());
    }
}
