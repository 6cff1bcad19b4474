//! Whole-token matching of addresses and host names in configuration text:
//! the one definition of "this file names that host", shared by the agent's
//! `rewrite` and `scan` (and the controller, which can validate a plan with
//! it before sending it).
//!
//! A needle is an IPv4 address, an IPv6 address or a host name / FQDN. It
//! matches only as a whole token: `10.0.0.1` never inside `10.0.0.12`, `db`
//! never inside `dbadmin`, `db-replica`, `db_host`, `mydb` or `db.prod`. The
//! boundaries depend on the needle's kind:
//!
//! - host names are compared case-insensitively and must not be continued by
//!   `[A-Za-z0-9_-]` on either side; a `.` continues a name only when a name
//!   character stands beyond it (`db.` ending a sentence matches, `db.prod`
//!   and `prod` inside `db.prod` do not); `::` next to a name marks an IPv6
//!   literal or a code path (`fd00::db`, `Foo::db`), not a host; a single
//!   `/` before a name makes it a path segment (`location /api/`,
//!   `/var/lib/db`), while `//` before it starts an authority (`//db/x`).
//! - IPv4 addresses must not be continued by a digit, nor by a `.` followed
//!   by a digit, on either side.
//! - IPv6 addresses are compared case-insensitively and must not be
//!   continued by a hex digit, nor by a `:` followed by a hex digit or `:`,
//!   on either side, nor by a `.` followed by a digit on the right.
//!   `[2001:db8::1]:5432` and a zone (`fe80::1%eth0`) stay outside the match.
//!   Besides the spelling given, the canonical (RFC 5952), the uncompressed
//!   and the fully expanded spellings of the address match too.
//!
//! In a URL only the host names a host, for every kind of needle: in
//! `https://u:p@api:8443/v1/api/?q=api#api` only the `api` after `@` can
//! match. A URL is `scheme://[userinfo@]authority[/path][?query][#frag]`
//! (scheme as RFC 3986 spells it), or without a scheme `host:port/path...`
//! (a port of one to five digits, then `/`); `host/path` without a port is
//! not taken for one, since a relative file path looks the same. Scheme,
//! userinfo, path, query and fragment are skipped; the authority (several
//! hosts separated by commas too) is matched as usual. A URL ends at
//! whitespace, a quote or any of `<>(){}|\^,;`, which errs towards ending
//! it early: a host after the end is still found, never hidden. Outside a
//! URL an address after a `/` is still a token (dnsmasq spells
//! `address=/db.example/10.0.0.1`), unlike a host name.
//!
//! Not handled: other mixed spellings of one IPv6 address (`2001:db8:0::1`),
//! IPv4 spellings with leading zeros or fewer than four parts, IPv4-mapped
//! IPv6 written in hex (`::ffff:a00:1`), host names in Unicode form (bytes
//! outside ASCII count as boundaries), a hex-only host name between single
//! colons inside an IPv6 literal (`fd00:1:db:2` names `db`: so does
//! `8080:db:5432`, which is the common case), and names spelled with escapes
//! or split across lines.
//!
//! Matching goes from left to right: at each position the longest needle
//! that matches there at token boundaries wins (`db.prod.example` before
//! `db`). Text that has been replaced is never looked at again, so a map
//! `a -> b, b -> c` turns `a b` into `b c`, not `c c`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Passes of [`Rewriter::rewrite`] at most; real text needs one or two.
pub const MAX_PASSES: usize = 32;

/// Longest host name DNS allows, and longest label.
const MAX_HOSTNAME: usize = 253;
const MAX_LABEL: usize = 63;

/// What a needle is, which decides its boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    Ipv4,
    Ipv6,
    Hostname,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("nothing to look for")]
    NoNeedles,
    #[error("empty key")]
    EmptyKey,
    #[error("`{token}` is not an IPv4 address, an IPv6 address or a host name")]
    InvalidKey { token: String },
    #[error("the replacement `{value}` for `{key}` is not an IPv4 address, an IPv6 address or a host name")]
    InvalidValue { key: String, value: String },
    #[error("`{first}` and `{second}` are the same address or name")]
    DuplicateKey { first: String, second: String },
    #[error("`{subnet}` is not an IPv4 subnet such as 10.77.1.0/24")]
    InvalidSubnet { subnet: String },
    #[error("`{key}` is mapped to itself")]
    MapsToItself { key: String },
    #[error("the replacement `{value}` for `{key}` names `{names}`, which the plan rewrites too: a second run would change it again")]
    NotIdempotent { key: String, value: String, names: String },
}

/// Classifies `token` as a needle, or `None` when it is neither an address
/// nor a valid host name. Host names follow RFC 1123 labels, with `_` also
/// allowed (it is common in internal names); a last label of digits only is
/// refused, so that `10.0.0` or `10.0.0.01` is not taken for a name.
pub fn classify(token: &str) -> Option<TokenKind> {
    if token.parse::<Ipv4Addr>().is_ok() {
        return Some(TokenKind::Ipv4);
    }
    if token.contains(':') {
        return token.parse::<Ipv6Addr>().is_ok().then_some(TokenKind::Ipv6);
    }
    is_hostname(token).then_some(TokenKind::Hostname)
}

fn is_hostname(token: &str) -> bool {
    if token.is_empty() || token.len() > MAX_HOSTNAME {
        return false;
    }
    let labels: Vec<&str> = token.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && label.bytes().all(is_host_byte)
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    labels.iter().all(label_ok) && labels.last().is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

/// A byte that can continue a host name.
fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The spellings of `needle` that match, lower-cased, the given one first.
fn spellings(needle: &str, kind: TokenKind) -> Vec<String> {
    let mut forms = vec![needle.to_ascii_lowercase()];
    if kind == TokenKind::Ipv6 {
        if let Ok(addr) = needle.parse::<Ipv6Addr>() {
            let segments = addr.segments();
            let uncompressed = segments.iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join(":");
            let expanded = segments.iter().map(|s| format!("{s:04x}")).collect::<Vec<_>>().join(":");
            forms.extend([addr.to_string(), uncompressed, expanded]);
        }
    }
    let mut seen = Vec::new();
    forms.retain(|f| {
        let fresh = !seen.contains(f);
        seen.push(f.clone());
        fresh
    });
    forms
}

#[derive(Debug, Clone)]
struct Pattern {
    /// Lower-cased; compared ignoring ASCII case.
    text: Vec<u8>,
    kind: TokenKind,
    needle: usize,
}

/// A set of needles and the index that finds them in text.
#[derive(Debug, Clone)]
pub struct Matcher {
    needles: Vec<String>,
    kinds: Vec<TokenKind>,
    /// Longest first, so that the first one accepted at a position wins.
    patterns: Vec<Pattern>,
    /// Indices into `patterns` by lower-cased first byte, in `patterns` order.
    by_first_byte: Vec<Vec<usize>>,
}

/// One whole-token occurrence: `text[start..end]` names `needle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub start: usize,
    pub end: usize,
    /// Index into [`Matcher::needles`].
    pub needle: usize,
}

/// A match with its place in lines, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineMatch {
    /// 1-based.
    pub line: usize,
    /// 1-based, in bytes.
    pub column: usize,
    /// Byte range of the whole line, without its line break.
    pub line_start: usize,
    pub line_end: usize,
    pub needle: usize,
}

impl Matcher {
    /// A matcher for `needles`, each of which must be an address or a host
    /// name; two spellings of one address or name are refused.
    pub fn new<I, S>(needles: I) -> Result<Self, MatcherError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let needles: Vec<String> = needles.into_iter().map(|n| n.as_ref().to_string()).collect();
        if needles.is_empty() {
            return Err(MatcherError::NoNeedles);
        }
        let mut kinds = Vec::with_capacity(needles.len());
        let mut patterns: Vec<Pattern> = Vec::new();
        for (index, needle) in needles.iter().enumerate() {
            if needle.is_empty() {
                return Err(MatcherError::EmptyKey);
            }
            let kind = classify(needle).ok_or_else(|| MatcherError::InvalidKey { token: needle.clone() })?;
            kinds.push(kind);
            for form in spellings(needle, kind) {
                if let Some(other) = patterns.iter().find(|p| p.text == form.as_bytes()) {
                    return Err(MatcherError::DuplicateKey {
                        first: needles[other.needle].clone(),
                        second: needle.clone(),
                    });
                }
                patterns.push(Pattern { text: form.into_bytes(), kind, needle: index });
            }
        }
        // Stable: among equal lengths the order of the needles decides, which
        // cannot matter since equal-length distinct patterns never both match
        // at one position.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.text.len()));
        let mut by_first_byte = vec![Vec::new(); 128];
        for (i, pattern) in patterns.iter().enumerate() {
            by_first_byte[usize::from(pattern.text[0])].push(i);
        }
        Ok(Matcher { needles, kinds, patterns, by_first_byte })
    }

    /// The needles as given, in the order given.
    pub fn needles(&self) -> &[String] {
        &self.needles
    }

    pub fn kind(&self, needle: usize) -> TokenKind {
        self.kinds[needle]
    }

    /// Every whole-token occurrence in `text`, left to right, never overlapping.
    pub fn find_iter<'a>(&'a self, text: &'a [u8]) -> Matches<'a> {
        self.find_iter_outside(text, &[])
    }

    /// Like [`Matcher::find_iter`], but no match overlaps a span of
    /// `masked` (sorted, disjoint byte ranges); boundaries still look at
    /// the whole text.
    fn find_iter_outside<'a>(&'a self, text: &'a [u8], masked: &[(usize, usize)]) -> Matches<'a> {
        let masked = merge_spans(url_masks(text), masked);
        Matches { matcher: self, text, pos: 0, masked, next_mask: 0 }
    }

    pub fn is_match(&self, text: &[u8]) -> bool {
        self.find_iter(text).next().is_some()
    }

    /// The longest needle that matches at `pos` as a whole token.
    fn match_at(&self, text: &[u8], pos: usize, limit: usize) -> Option<Match> {
        let first = text[pos];
        if !first.is_ascii() {
            return None;
        }
        let candidates = &self.by_first_byte[usize::from(first.to_ascii_lowercase())];
        candidates.iter().map(|&i| &self.patterns[i]).find_map(|pattern| {
            let end = pos + pattern.text.len();
            let hit = end <= limit
                && text[pos..end].eq_ignore_ascii_case(&pattern.text)
                && left_boundary(pattern.kind, text, pos)
                && right_boundary(pattern.kind, text, end);
            hit.then_some(Match { start: pos, end, needle: pattern.needle })
        })
    }

    /// Every match with its line and column: what `scan` reports.
    pub fn find_lines(&self, text: &[u8]) -> Vec<LineMatch> {
        locate_lines(text, self.find_iter(text).map(|m| (m.start, m.needle)))
    }
}

/// Line, column and line span of each `(start, needle)`, which come in
/// ascending order of `start`.
fn locate_lines(text: &[u8], matches: impl Iterator<Item = (usize, usize)>) -> Vec<LineMatch> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut line_start = 0;
    let mut counted_to = 0;
    for (start, needle) in matches {
        for (offset, &b) in text[counted_to..start].iter().enumerate() {
            if b == b'\n' {
                line += 1;
                line_start = counted_to + offset + 1;
            }
        }
        counted_to = start;
        let line_end = text[start..].iter().position(|&b| b == b'\n').map_or(text.len(), |p| start + p);
        let line_end = if line_end > line_start && text[line_end - 1] == b'\r' { line_end - 1 } else { line_end };
        out.push(LineMatch { line, column: start - line_start + 1, line_start, line_end, needle });
    }
    out
}

/// Iterator of [`Matcher::find_iter`].
#[derive(Debug)]
pub struct Matches<'a> {
    matcher: &'a Matcher,
    text: &'a [u8],
    pos: usize,
    /// Sorted, disjoint byte ranges no match may overlap.
    masked: Vec<(usize, usize)>,
    /// The first span of `masked` not yet behind `pos`.
    next_mask: usize,
}

impl Iterator for Matches<'_> {
    type Item = Match;

    fn next(&mut self) -> Option<Match> {
        while self.pos < self.text.len() {
            // Skip spans behind us, and jump over one we stand in.
            while let Some(&(start, end)) = self.masked.get(self.next_mask) {
                if start <= self.pos {
                    self.pos = self.pos.max(end);
                    self.next_mask += 1;
                } else {
                    break;
                }
            }
            if self.pos >= self.text.len() {
                break;
            }
            let limit = self.masked.get(self.next_mask).map_or(self.text.len(), |&(start, _)| start);
            if let Some(m) = self.matcher.match_at(self.text, self.pos, limit) {
                self.pos = m.end;
                return Some(m);
            }
            self.pos += 1;
        }
        None
    }
}

/// The parts of URLs in `text` that name no host (see the module doc):
/// sorted, disjoint byte ranges.
fn url_masks(text: &[u8]) -> Vec<(usize, usize)> {
    let mut masks = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        if let Some(scheme) = text[pos..].starts_with(b"://").then(|| scheme_start(text, pos)).flatten() {
            let authority = pos + 3;
            let end = url_end(text, authority);
            let host_end = text[authority..end]
                .iter()
                .position(|b| matches!(b, b'/' | b'?' | b'#'))
                .map_or(end, |p| authority + p);
            masks.push((scheme, authority));
            if let Some(at) = text[authority..host_end].iter().rposition(|&b| b == b'@') {
                masks.push((authority, authority + at + 1));
            }
            if host_end < end {
                masks.push((host_end, end));
            }
            pos = end;
        } else if text[pos] == b'/' && port_before(text, pos) {
            let end = url_end(text, pos);
            masks.push((pos, end));
            pos = end;
        } else {
            pos += 1;
        }
    }
    masks
}

/// Where the scheme ending at `colon` (the `:` of `://`) starts, if one does.
fn scheme_start(text: &[u8], colon: usize) -> Option<usize> {
    let is_scheme_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
    let len = text[..colon].iter().rev().take_while(|b| is_scheme_byte(b)).count();
    let start = colon - len;
    (len > 0 && text[start].is_ascii_alphabetic()).then_some(start)
}

/// Whether `host:port` (a port of one to five digits) stands right before
/// the `/` at `slash`.
fn port_before(text: &[u8], slash: usize) -> bool {
    let digits = text[..slash].iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let colon = slash - digits;
    (1..=5).contains(&digits)
        && colon >= 2
        && text[colon - 1] == b':'
        && (is_host_byte(text[colon - 2]) || text[colon - 2] == b']')
}

/// The end of the URL that goes on at `from`.
fn url_end(text: &[u8], from: usize) -> usize {
    let in_url = |b: &u8| b.is_ascii_graphic() && !b"\"'`<>(){}|\\^,;".contains(b);
    from + text[from..].iter().take_while(|b| in_url(b)).count()
}

/// The union of two lists of sorted, disjoint spans, itself sorted and
/// disjoint.
fn merge_spans(mut spans: Vec<(usize, usize)>, more: &[(usize, usize)]) -> Vec<(usize, usize)> {
    spans.extend_from_slice(more);
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn left_boundary(kind: TokenKind, text: &[u8], start: usize) -> bool {
    let Some(&before) = start.checked_sub(1).and_then(|i| text.get(i)) else { return true };
    let further = start.checked_sub(2).and_then(|i| text.get(i)).copied();
    !continues(kind, before, further, Side::Left)
}

fn right_boundary(kind: TokenKind, text: &[u8], end: usize) -> bool {
    let Some(&after) = text.get(end) else { return true };
    !continues(kind, after, text.get(end + 1).copied(), Side::Right)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// Whether `next` (with `beyond` one further out) continues a token of
/// `kind` on `side`, so that the token is part of something longer.
fn continues(kind: TokenKind, next: u8, beyond: Option<u8>, side: Side) -> bool {
    let beyond_is = |f: fn(u8) -> bool| beyond.is_some_and(f);
    match kind {
        TokenKind::Hostname => {
            is_host_byte(next)
                || (next == b'.' && beyond_is(is_host_byte))
                || (next == b':' && beyond == Some(b':'))
                || (side == Side::Left && next == b'/' && beyond != Some(b'/'))
        }
        TokenKind::Ipv4 => next.is_ascii_digit() || (next == b'.' && beyond_is(|b| b.is_ascii_digit())),
        TokenKind::Ipv6 => {
            next.is_ascii_hexdigit()
                || (next == b':' && beyond_is(|b| b.is_ascii_hexdigit() || b == b':'))
                || (side == Side::Right && next == b'.' && beyond_is(|b| b.is_ascii_digit()))
        }
    }
}

/// A map of old to new values and the matcher of the old ones.
#[derive(Debug, Clone)]
pub struct Rewriter {
    matcher: Matcher,
    /// Indexed like the matcher's needles.
    values: Vec<String>,
}

/// The result of [`Rewriter::rewrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub text: String,
    /// Replacements made per old value, only those that matched.
    pub replacements: BTreeMap<String, u64>,
}

impl Rewritten {
    pub fn total(&self) -> u64 {
        self.replacements.values().sum()
    }
}

impl Rewriter {
    /// Checks every key and value. Chains (`a -> b, b -> c`) are allowed
    /// here, and are applied in one pass; [`Rewriter::ensure_idempotent`]
    /// refuses them where running twice must be harmless.
    pub fn new(map: &BTreeMap<String, String>) -> Result<Self, MatcherError> {
        let matcher = Matcher::new(map.keys())?;
        for (key, value) in map {
            if classify(value).is_none() {
                return Err(MatcherError::InvalidValue { key: key.clone(), value: value.clone() });
            }
        }
        Ok(Rewriter { matcher, values: map.values().cloned().collect() })
    }

    /// Refuses a map whose replacements name one of its keys (`a -> b,
    /// b -> c`, swaps, `db -> DB`): running such a plan twice rewrites twice.
    pub fn ensure_idempotent(&self) -> Result<(), MatcherError> {
        for (index, value) in self.values.iter().enumerate() {
            if let Some(m) = self.matcher.find_iter(value.as_bytes()).next() {
                let key = self.matcher.needles[index].clone();
                if m.needle == index {
                    return Err(MatcherError::MapsToItself { key });
                }
                let names = self.matcher.needles[m.needle].clone();
                return Err(MatcherError::NotIdempotent { key, value: value.clone(), names });
            }
        }
        Ok(())
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Replaces every whole-token occurrence of a key with its value.
    ///
    /// A replacement can change what stands next to a key (`fe80::1:cache`
    /// names `fe80::1` only once `cache`, which continues the address with
    /// hex, has become `kv-clone`), so passes repeat, each judging
    /// boundaries in the text as the pass before left it, until one finds
    /// nothing. Replaced text is never matched again, so chains are not
    /// followed. This keeps the promise `scan` checks: afterwards no key is
    /// left as a whole token (unless a text exposes keys one by one for more
    /// than [`MAX_PASSES`] passes, which is left to `scan` to show).
    pub fn rewrite(&self, text: &str) -> Rewritten {
        self.rewrite_with_spans(text, |_, _| ()).0
    }

    /// [`Rewriter::rewrite`], also returning what was replaced: spans of
    /// the output that hold values, each with the text it replaced.
    /// `on_pass` sees the text and the matches of every pass.
    fn rewrite_with_spans(&self, text: &str, mut on_pass: impl FnMut(&str, &[Match])) -> (Rewritten, Vec<Replaced>) {
        let mut current = text.to_string();
        let mut replaced: Vec<Replaced> = Vec::new();
        let mut counts = vec![0u64; self.values.len()];
        for _ in 0..MAX_PASSES {
            let masked: Vec<(usize, usize)> = replaced.iter().map(|r| (r.start, r.end)).collect();
            let found: Vec<Match> = self.matcher.find_iter_outside(current.as_bytes(), &masked).collect();
            if found.is_empty() {
                break;
            }
            on_pass(&current, &found);
            // Merge the earlier replacements (kept as they are) with the new
            // matches (replaced now), in text order.
            let mut earlier = std::mem::take(&mut replaced).into_iter().peekable();
            let mut out = String::with_capacity(current.len());
            let mut copied_to = 0;
            for m in found {
                while let Some(r) = earlier.next_if(|r| r.start < m.start) {
                    out.push_str(&current[copied_to..r.start]);
                    let start = out.len();
                    out.push_str(&current[r.start..r.end]);
                    replaced.push(Replaced { start, end: out.len(), ..r });
                    copied_to = r.end;
                }
                // Matches start and end next to ASCII bytes or the ends of
                // the text, so these are char boundaries.
                out.push_str(&current[copied_to..m.start]);
                let start = out.len();
                out.push_str(&self.values[m.needle]);
                counts[m.needle] += 1;
                replaced.push(Replaced {
                    start,
                    end: out.len(),
                    needle: m.needle,
                    original: current[m.start..m.end].to_string(),
                });
                copied_to = m.end;
            }
            for r in earlier {
                out.push_str(&current[copied_to..r.start]);
                let start = out.len();
                out.push_str(&current[r.start..r.end]);
                replaced.push(Replaced { start, end: out.len(), ..r });
                copied_to = r.end;
            }
            out.push_str(&current[copied_to..]);
            current = out;
        }
        let replacements = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (self.matcher.needles[i].clone(), n))
            .collect();
        (Rewritten { text: current, replacements }, replaced)
    }
}

/// One replacement in the output of [`Rewriter::rewrite_with_spans`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replaced {
    /// Byte range of the value in the output.
    start: usize,
    end: usize,
    needle: usize,
    /// The spelling of the key it replaced.
    original: String,
}

pub mod subnets;

#[cfg(test)]
mod tests;
