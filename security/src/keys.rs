//! API keys with scopes, from a file that is re-read when it changes and
//! from an environment variable.
//!
//! **Format.** One entry per line, `read:<key>` or `write:<key>`; blank lines
//! and lines starting with `#` are ignored. The environment variable takes
//! the same entries separated by newlines, commas or spaces. A key is 16 to
//! 256 printable ASCII characters, without spaces or commas (`openssl rand
//! -hex 32` makes a good one). `write` implies `read`.
//!
//! **In memory** only SHA-256 digests are kept. A presented key is hashed
//! and compared with every stored digest in constant time, without stopping
//! at the first match, so neither the comparison nor the position of a key
//! in the file shows in the response time.
//!
//! **Reload.** [`ApiKeys::watch`] re-reads the file every few seconds and
//! swaps the whole set when its content changed: a new key works and a
//! removed key fails from the next request on, without a restart. A file
//! that cannot be read or parsed leaves the previous keys in force (an
//! operator's typo must not lock every client out, nor let anyone in) and is
//! reported once per change. Polling rather than SIGHUP: Kubernetes updates
//! a mounted Secret in place and sends no signal.
//!
//! Errors and logs never contain a key, not even part of one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use ring::digest::{digest, SHA256};

/// Shortest key accepted: 16 random characters are beyond guessing, and
/// anything shorter is likely a placeholder left in a file.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted, which bounds the header a client may make us hash.
pub const MAX_KEY_LEN: usize = 256;

/// What a key may do. `Write` implies `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    /// Whether a key of this scope may call a method that needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Digest = [u8; 32];

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Equality that looks at every byte whatever the first difference.
fn constant_time_eq(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A malformed entry: where it is and what is wrong, never the key itself.
#[derive(Debug, thiserror::Error)]
#[error("{origin} {place} {index}: {reason}")]
pub struct KeyError {
    origin: String,
    /// "line" in a file, "entry" in a list.
    place: &'static str,
    index: usize,
    reason: String,
}

/// How many keys of each scope a set holds (what logs may say about keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub read: usize,
    pub write: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} read, {} write", self.read, self.write)
    }
}

#[derive(Clone)]
struct Entry {
    digest: Digest,
    scope: Scope,
}

/// An immutable set of keys (as digests) with their scopes.
#[derive(Clone, Default)]
pub struct KeySet {
    entries: Vec<Entry>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySet({})", self.counts())
    }
}

impl KeySet {
    /// Parses a key file: one entry per line, `#` comments.
    pub fn parse_file(text: &str, origin: &str) -> Result<Self, KeyError> {
        let entries = text.lines().enumerate().map(|(i, line)| (i + 1, line.trim()));
        Self::parse(entries.filter(|(_, l)| !l.is_empty() && !l.starts_with('#')), origin, "line")
    }

    /// Parses a list (the environment variable): entries separated by
    /// newlines, commas or spaces.
    pub fn parse_list(text: &str, origin: &str) -> Result<Self, KeyError> {
        let entries = text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty());
        Self::parse(entries.enumerate().map(|(i, e)| (i + 1, e)), origin, "entry")
    }

    fn parse<'a>(
        entries: impl Iterator<Item = (usize, &'a str)>,
        origin: &str,
        place: &'static str,
    ) -> Result<Self, KeyError> {
        let error = |index, reason: String| KeyError { origin: origin.to_string(), place, index, reason };
        let mut set = KeySet::default();
        let mut places = Vec::new();
        for (index, entry) in entries {
            let (scope, key) = parse_entry(entry).map_err(|reason| error(index, reason.to_string()))?;
            let digest = sha256(key.as_bytes());
            if let Some(at) = set.position(&digest) {
                return Err(error(index, format!("the same key is already at {place} {}", places[at])));
            }
            set.entries.push(Entry { digest, scope });
            places.push(index);
        }
        Ok(set)
    }

    fn position(&self, digest: &Digest) -> Option<usize> {
        self.entries.iter().position(|e| constant_time_eq(&e.digest, digest))
    }

    /// Both sets together; a key in both is refused rather than given the
    /// larger or the smaller scope by some precedence rule.
    pub fn union(&self, other: &KeySet) -> Result<KeySet, String> {
        if other.entries.iter().any(|e| self.position(&e.digest).is_some()) {
            return Err("a key is listed in more than one source".to_string());
        }
        Ok(KeySet { entries: self.entries.iter().chain(&other.entries).cloned().collect() })
    }

    /// The scope of a presented key, if it is one of ours.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let digest = sha256(presented.as_bytes());
        // No early return: every stored digest is compared.
        let mut found = None;
        for e in &self.entries {
            if constant_time_eq(&e.digest, &digest) {
                found = Some(e.scope);
            }
        }
        found
    }

    pub fn counts(&self) -> Counts {
        let read = self.entries.iter().filter(|e| e.scope == Scope::Read).count();
        Counts { read, write: self.entries.len() - read }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `read:<key>` or `write:<key>`, checked. Error texts never quote the entry.
fn parse_entry(entry: &str) -> Result<(Scope, &str), &'static str> {
    let (scope, key) = entry.split_once(':').ok_or("expected `read:<key>` or `write:<key>`")?;
    let scope = match scope.trim() {
        "read" => Scope::Read,
        "write" => Scope::Write,
        _ => return Err("the scope (before the first `:`) must be `read` or `write`"),
    };
    let key = key.trim();
    if key.len() < MIN_KEY_LEN {
        return Err("the key is shorter than 16 characters");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("the key is longer than 256 characters");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err("a key may hold only printable ASCII characters, without spaces or commas");
    }
    Ok((scope, key))
}

/// The keys a server accepts: those of the key file (re-read when it
/// changes) plus those of the environment (fixed for the life of the
/// process). Cheap to clone; clones share the keys.
#[derive(Clone)]
pub struct ApiKeys {
    shared: Arc<Shared>,
}

struct Shared {
    file: Option<PathBuf>,
    from_env: KeySet,
    current: RwLock<Arc<KeySet>>,
    /// Digest of the file content last read, applied or refused: an
    /// unchanged file is not parsed again, and a bad one is reported once.
    last_read: Mutex<Option<Digest>>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys").field("file", &self.shared.file).field("keys", &self.counts()).finish()
    }
}

impl ApiKeys {
    /// Loads the keys of `file` and of `list` (the environment variable's
    /// value, named `list_origin` in errors). An unreadable or malformed
    /// source fails: a server must not start with other keys than its
    /// operator wrote.
    pub fn load(file: Option<&Path>, list: Option<&str>, list_origin: &str) -> anyhow::Result<Self> {
        let from_env = match list {
            Some(text) => KeySet::parse_list(text, list_origin)?,
            None => KeySet::default(),
        };
        let keys = ApiKeys {
            shared: Arc::new(Shared {
                file: file.map(Path::to_path_buf),
                current: RwLock::new(Arc::new(from_env.clone())),
                from_env,
                last_read: Mutex::new(None),
            }),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// The key file, if keys come from one.
    pub fn file(&self) -> Option<&Path> {
        self.shared.file.as_deref()
    }

    /// How many keys of each scope are in force.
    pub fn counts(&self) -> Counts {
        self.shared.current.read().counts()
    }

    /// The scope of a presented key, if it is one of the keys in force.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let current = Arc::clone(&self.shared.current.read());
        current.scope_of(presented)
    }

    /// Re-reads the key file now. `Ok(Some(counts))` when new keys took
    /// effect, `Ok(None)` when the file is unchanged (or there is none); an
    /// error leaves the previous keys in force.
    pub fn reload(&self) -> anyhow::Result<Option<Counts>> {
        let Some(path) = self.file() else { return Ok(None) };
        let bytes = std::fs::read(path).with_context(|| format!("reading the API key file {}", path.display()))?;
        self.apply(path, &bytes)
    }

    fn apply(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<Option<Counts>> {
        let digest = sha256(bytes);
        {
            let mut last = self.shared.last_read.lock();
            if last.as_ref() == Some(&digest) {
                return Ok(None);
            }
            *last = Some(digest);
        }
        let origin = path.display().to_string();
        let text = std::str::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{origin}: not UTF-8 text"))?;
        let from_file = KeySet::parse_file(text, &origin)?;
        let all = from_file.union(&self.shared.from_env).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        let counts = all.counts();
        *self.shared.current.write() = Arc::new(all);
        Ok(Some(counts))
    }

    /// Re-reads the key file every `every` on the current tokio runtime
    /// until the returned guard is dropped, and logs what changed (counts,
    /// never keys). `None` when there is no file to watch.
    pub fn watch(&self, every: Duration) -> Option<Watch> {
        let path = self.file()?.to_path_buf();
        let keys = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // The last failure logged, so a file that stays unreadable is
            // reported once rather than every few seconds.
            let mut reported = None;
            loop {
                tick.tick().await;
                let result = match tokio::fs::read(&path).await {
                    Ok(bytes) => keys.apply(&path, &bytes),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
                };
                match result {
                    Ok(changed) => {
                        reported = None;
                        if let Some(counts) = changed {
                            tracing::info!(file = %path.display(), keys = %counts, "API keys reloaded");
                        }
                    }
                    Err(e) => {
                        let error = format!("{e:#}");
                        if reported.as_ref() != Some(&error) {
                            tracing::error!(error, "API key file not applied; the previous keys stay in force");
                            reported = Some(error);
                        }
                    }
                }
            }
        });
        Some(Watch { task })
    }
}

/// Stops the key file watch when dropped.
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "reader-key-0123456789";
    const W: &str = "writer-key-0123456789";

    #[test]
    fn parses_scopes_comments_and_blank_lines() {
        let text = format!("# keys\n\nread:{R}\r\n  write:{W}  \n");
        let set = KeySet::parse_file(&text, "keys.txt").unwrap();
        assert_eq!(set.counts(), Counts { read: 1, write: 1 });
        assert_eq!(set.scope_of(R), Some(Scope::Read));
        assert_eq!(set.scope_of(W), Some(Scope::Write));
        assert_eq!(set.scope_of("other-key-0123456789"), None);
        assert_eq!(set.scope_of(&R[..R.len() - 1]), None, "a prefix is not the key");
    }

    #[test]
    fn lists_take_commas_and_spaces() {
        let set = KeySet::parse_list(&format!("read:{R}, write:{W}"), "VITRINE_API_KEYS").unwrap();
        assert_eq!(set.counts(), Counts { read: 1, write: 1 });
    }

    #[test]
    fn a_key_may_contain_colons() {
        let set = KeySet::parse_file("write:abc:def:0123456789abc", "f").unwrap();
        assert_eq!(set.scope_of("abc:def:0123456789abc"), Some(Scope::Write));
    }

    #[test]
    fn errors_name_the_place_not_the_key() {
        let cases = [
            ("read:short", "line 1", "shorter"),
            ("admin:0123456789abcdefgh", "line 1", "scope"),
            ("0123456789abcdefghij", "line 1", "expected"),
            ("# c\nread:0123456789abcdefé", "line 2", "printable"),
            (&format!("read:{R}\nwrite:{R}") as &str, "line 2", "already at line 1"),
        ];
        for (text, place, reason) in cases {
            let e = KeySet::parse_file(text, "keys.txt").unwrap_err().to_string();
            assert!(e.starts_with(&format!("keys.txt {place}:")) && e.contains(reason), "{text:?}: {e}");
            assert!(!e.contains("0123456789"), "the error quotes the key: {e}");
        }
    }

    #[test]
    fn write_implies_read() {
        assert!(Scope::Write.allows(Scope::Read));
        assert!(Scope::Write.allows(Scope::Write));
        assert!(Scope::Read.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
    }

    #[test]
    fn reload_swaps_keys_and_keeps_them_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("read:{R}\n")).unwrap();
        let keys = ApiKeys::load(Some(&path), Some(&format!("write:{W}")), "VITRINE_API_KEYS").unwrap();
        assert_eq!(keys.counts(), Counts { read: 1, write: 1 });
        assert_eq!(keys.reload().unwrap(), None, "unchanged");

        std::fs::write(&path, "write:rotated-key-0123456789\n").unwrap();
        assert_eq!(keys.reload().unwrap(), Some(Counts { read: 0, write: 2 }));
        assert_eq!(keys.scope_of(R), None, "the removed key fails");
        assert_eq!(keys.scope_of("rotated-key-0123456789"), Some(Scope::Write));
        assert_eq!(keys.scope_of(W), Some(Scope::Write), "environment keys stay");

        std::fs::write(&path, "write:oops\n").unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(keys.scope_of("rotated-key-0123456789"), Some(Scope::Write), "previous keys stay in force");
        assert_eq!(keys.reload().unwrap(), None, "a bad file is reported once");

        std::fs::write(&path, format!("read:{W}\n")).unwrap();
        assert!(keys.reload().unwrap_err().to_string().contains("more than one source"));
    }

    #[test]
    fn a_bad_source_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ApiKeys::load(Some(&dir.path().join("missing")), None, "E").is_err());
        assert!(ApiKeys::load(None, Some("read:short"), "E").is_err());
        let keys = ApiKeys::load(None, Some(&format!("read:{R}")), "E").unwrap();
        assert_eq!(keys.counts(), Counts { read: 1, write: 0 });
    }
}
