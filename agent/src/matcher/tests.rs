use super::*;
use proptest::prelude::*;

/// The map most table cases run with.
const MAP: &[(&str, &str)] = &[
    ("10.0.0.1", "10.9.0.1"),
    ("10.0.0.2", "10.9.0.2"),
    ("2001:db8::1", "2001:db8:9::1"),
    ("fe80::1", "fe80::9"),
    ("db", "pg"),
    ("db.prod.example", "db.clone.example"),
    ("cache.prod.example", "cache.clone.example"),
    ("cache", "kv-clone"),
];

/// A chain: `a -> b` and `b -> c` in one map.
const CHAIN: &[(&str, &str)] = &[("a.example", "b.example"), ("b.example", "c.example")];

fn rewriter(map: &[(&str, &str)]) -> Rewriter {
    let map: BTreeMap<String, String> = map.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Rewriter::new(&map).unwrap()
}

struct Case {
    name: &'static str,
    map: &'static [(&'static str, &'static str)],
    input: &'static str,
    expected: &'static str,
}

const fn case(name: &'static str, input: &'static str, expected: &'static str) -> Case {
    Case { name, map: MAP, input, expected }
}

const CASES: &[Case] = &[
    // IPv4 and its boundaries.
    case("ipv4 alone", "10.0.0.1", "10.9.0.1"),
    case("ipv4 never inside a longer last octet", "10.0.0.12", "10.0.0.12"),
    case("ipv4 never inside a longer first octet", "110.0.0.1", "110.0.0.1"),
    case("ipv4 never as the head of five parts", "10.0.0.1.5", "10.0.0.1.5"),
    case("ipv4 never as the tail of five parts", "5.10.0.0.1", "5.10.0.0.1"),
    case("ipv4 ending a sentence", "ping 10.0.0.1.", "ping 10.9.0.1."),
    case("ipv4 with a port", "10.0.0.1:5432", "10.9.0.1:5432"),
    case("ipv4 with a prefix length", "10.0.0.1/24", "10.9.0.1/24"),
    case("ipv4 list", "10.0.0.1,10.0.0.2", "10.9.0.1,10.9.0.2"),
    case("ipv4 glued to a cli flag", "mysql -h10.0.0.1 -P3306", "mysql -h10.9.0.1 -P3306"),
    case("ipv4 mapped into ipv6", "::ffff:10.0.0.1", "::ffff:10.9.0.1"),
    case("nginx upstream", "    server 10.0.0.1:8080;", "    server 10.9.0.1:8080;"),
    // IPv6.
    case("ipv6 alone", "2001:db8::1", "2001:db8:9::1"),
    case("ipv6 in brackets with a port", "[2001:db8::1]:5432", "[2001:db8:9::1]:5432"),
    case("ipv6 never inside a longer last group", "2001:db8::10", "2001:db8::10"),
    case("ipv6 never when a group follows", "2001:db8::1:5432", "2001:db8::1:5432"),
    case("ipv6 never when a group precedes", "3:2001:db8::1", "3:2001:db8::1"),
    case("ipv6 never inside a longer first group", "ffe80::1", "ffe80::1"),
    case("ipv6 upper case", "2001:DB8::1", "2001:db8:9::1"),
    case("ipv6 fully expanded", "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8:9::1"),
    case("ipv6 uncompressed", "2001:db8:0:0:0:0:0:1", "2001:db8:9::1"),
    case("ipv6 with a zone", "fe80::1%eth0", "fe80::9%eth0"),
    case("ipv6 url with an escaped zone", "http://[fe80::1%25eth0]:80/", "http://[fe80::9%25eth0]:80/"),
    // Host names and their boundaries.
    case("host alone", "db", "pg"),
    case("host never inside dbadmin", "dbadmin", "dbadmin"),
    case("host never inside db-replica", "db-replica", "db-replica"),
    case("host never inside db_host", "db_host", "db_host"),
    case("host never inside mydb", "mydb", "mydb"),
    case("host never as the first label of another name", "db.prod", "db.prod"),
    case("host never as the last labels of another name", "api.db.prod.example", "api.db.prod.example"),
    case("longest key wins", "db.prod.example", "db.clone.example"),
    case("fqdn with the root dot", "db.prod.example.", "db.clone.example."),
    case("host ending a sentence", "connect to db.", "connect to pg."),
    case("host names ignore case", "DB and Db.Prod.EXAMPLE", "pg and db.clone.example"),
    case("host with a port", "db:5432", "pg:5432"),
    case("host in a port forward", "ssh -L 8080:db:5432", "ssh -L 8080:pg:5432"),
    case("host never inside an ipv6 literal", "fd00::db", "fd00::db"),
    case("host never in a code path", "Pool::db::connect", "Pool::db::connect"),
    case("host next to non-ascii text", "→db←", "→pg←"),
    case("host in an email address", "dba@db.prod.example", "dba@db.clone.example"),
    // URLs and DSNs.
    case("postgres url", "postgres://u:p@db:5432/x", "postgres://u:p@pg:5432/x"),
    case("postgres url by address", "postgresql://demo@10.0.0.1:5432/demo", "postgresql://demo@10.9.0.1:5432/demo"),
    case("jdbc url", "jdbc:postgresql://db:5432/x", "jdbc:postgresql://pg:5432/x"),
    case(
        "jdbc url with parameters",
        "jdbc:mysql://db.prod.example:3306/app?useSSL=true",
        "jdbc:mysql://db.clone.example:3306/app?useSSL=true",
    ),
    case("mysql url without a port", "mysql://db", "mysql://pg"),
    case("libpq key/value dsn", "host=db port=5432 dbname=app", "host=pg port=5432 dbname=app"),
    // In a URL only the host names a host: scheme, user, password, path,
    // query and fragment stay as they are, whatever they spell.
    case("in a url only the host is a token", "postgres://db:db@db/db", "postgres://db:db@pg/db"),
    case("url path segment spelled like a host", "https://db:8443/v1/db/", "https://pg:8443/v1/db/"),
    case("url query and fragment spelled like a host", "https://db/x?host=db#db", "https://pg/x?host=db#db"),
    case("url scheme spelled like a host", "db://db/", "db://pg/"),
    case("nginx proxy_pass", "proxy_pass http://db:8080/db/;", "proxy_pass http://pg:8080/db/;"),
    case("nginx location spelled like a host", "location /db/ {", "location /db/ {"),
    case("file path segment spelled like a host", "datadir=/var/lib/db", "datadir=/var/lib/db"),
    case("relative path: its first segment is a token", "db/migrations", "pg/migrations"),
    case("protocol-relative url", "//db/db", "//pg/db"),
    case("url without a scheme: host and port", "db:5432/db?host=db", "pg:5432/db?host=db"),
    case("url with several hosts", "postgres://db,cache:5432/db", "postgres://pg,kv-clone:5432/db"),
    case("ipv4 in a url path", "http://10.0.0.1/proxy/10.0.0.2", "http://10.9.0.1/proxy/10.0.0.2"),
    case("ipv4 in the path of a url without a scheme", "10.0.0.1:80/10.0.0.2", "10.9.0.1:80/10.0.0.2"),
    case("ipv4 as a url user", "ftp://10.0.0.2@10.0.0.1/", "ftp://10.0.0.2@10.9.0.1/"),
    case("ipv6 url with a path", "http://[2001:db8::1]:80/db", "http://[2001:db8:9::1]:80/db"),
    case("nfs export", "10.0.0.1:/export/db", "10.9.0.1:/export/db"),
    case("url ends at a space", "http://x/db db", "http://x/db pg"),
    case("url ends at a quote", "\"http://x/db\",\"db\"", "\"http://x/db\",\"pg\""),
    case("url ends at a semicolon", "http://x/db;db", "http://x/db;pg"),
    case(
        // A known limit: outside a URL only host names skip a path; an
        // address after a `/` is a token (dnsmasq spells its records so).
        "address in a path is a token",
        "address=/db.prod.example/10.0.0.1",
        "address=/db.prod.example/10.9.0.1",
    ),
    // Quoting and file formats.
    case("double quotes", "\"db\"", "\"pg\""),
    case("single quotes", "'10.0.0.1'", "'10.9.0.1'"),
    case("json", "{\"host\":\"db\",\"port\":5432}", "{\"host\":\"pg\",\"port\":5432}"),
    case("xml", "<host>db</host>", "<host>pg</host>"),
    case("comment", "# db was 10.0.0.1", "# pg was 10.9.0.1"),
    case("ini", "[database]\nhost = db\n", "[database]\nhost = pg\n"),
    case("yaml", "database:\n  host: db\n  port: 5432\n", "database:\n  host: pg\n  port: 5432\n"),
    case(".env, the variable names untouched", "DB_HOST=db\nDB_NAME=app\n", "DB_HOST=pg\nDB_NAME=app\n"),
    case(
        // A known limit: a variable named exactly like a host key is a token too.
        ".env variable spelled like a host is a token too",
        "DB=db\n",
        "pg=pg\n",
    ),
    case("replacement changes a neighbour's boundary", "fe80::1:cache", "fe80::9:kv-clone"),
    case("crlf line ends", "host=db\r\n", "host=pg\r\n"),
    case(
        "/etc/hosts",
        "127.0.0.1 localhost\n10.0.0.1 db db.prod.example\n10.0.0.12 dbadmin\n",
        "127.0.0.1 localhost\n10.9.0.1 pg db.clone.example\n10.0.0.12 dbadmin\n",
    ),
    case("other fqdn of the same domain", "cache.prod.example", "cache.clone.example"),
    // One pass only.
    Case { name: "chain replaces once", map: CHAIN, input: "a.example b.example", expected: "b.example c.example" },
    Case {
        name: "swap replaces once",
        map: &[("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")],
        input: "10.0.0.1 10.0.0.2",
        expected: "10.0.0.2 10.0.0.1",
    },
];

#[test]
fn matcher_table() {
    assert!(CASES.len() >= 30);
    let mut failures = Vec::new();
    for case in CASES {
        let got = rewriter(case.map).rewrite(case.input).text;
        if got != case.expected {
            failures.push(format!("{}: {:?} -> {:?}, expected {:?}", case.name, case.input, got, case.expected));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn scanning_the_table_outputs_finds_only_what_was_not_rewritten() {
    // Whatever the rewrite left unchanged in the table is exactly what a
    // scan for the old keys still finds: the two share one matcher.
    for case in CASES.iter().filter(|c| c.map == MAP) {
        let rewriter = rewriter(case.map);
        let out = rewriter.rewrite(case.input);
        assert!(!rewriter.matcher().is_match(out.text.as_bytes()), "{}: {:?}", case.name, out.text);
        assert_eq!(out.total() > 0, case.input != case.expected, "{}", case.name);
    }
}

#[test]
fn rewrite_counts_replacements_per_key() {
    let out = rewriter(MAP).rewrite("db db.prod.example 10.0.0.1 [2001:db8:0:0:0:0:0:1] DB");
    let expected: BTreeMap<String, u64> = [("db", 2), ("db.prod.example", 1), ("10.0.0.1", 1), ("2001:db8::1", 1)]
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    assert_eq!(out.replacements, expected);
    assert_eq!(out.total(), 5);
}

#[test]
fn classify_sorts_tokens() {
    assert_eq!(classify("10.77.1.12"), Some(TokenKind::Ipv4));
    assert_eq!(classify("2001:db8::1"), Some(TokenKind::Ipv6));
    assert_eq!(classify("::1"), Some(TokenKind::Ipv6));
    assert_eq!(classify("db"), Some(TokenKind::Hostname));
    assert_eq!(classify("db_1.prod-2.example"), Some(TokenKind::Hostname));
    assert_eq!(classify("3com.example"), Some(TokenKind::Hostname));
    for bad in [
        "",
        "10.0.0",
        "10.0.0.01",
        "10.0.0.256",
        "-db",
        "db-",
        "db..prod",
        "db.",
        ".db",
        "db:5432",
        "a b",
        "d\u{e9}j\u{e0}",
        "[::1]",
        "fe80::1%eth0",
    ] {
        assert_eq!(classify(bad), None, "{bad:?}");
    }
    assert_eq!(classify(&"a".repeat(64)), None);
    assert_eq!(classify(&["a"; 127].join(".")), Some(TokenKind::Hostname));
    assert_eq!(classify(&["a"; 128].join(".")), None);
}

#[test]
fn matcher_refuses_bad_needles() {
    assert_eq!(Matcher::new(Vec::<String>::new()).unwrap_err(), MatcherError::NoNeedles);
    assert_eq!(Matcher::new([""]).unwrap_err(), MatcherError::EmptyKey);
    assert!(matches!(Matcher::new(["db", "db:5432"]), Err(MatcherError::InvalidKey { token }) if token == "db:5432"));
    assert!(matches!(Matcher::new(["db", "DB"]), Err(MatcherError::DuplicateKey { .. })));
    assert!(matches!(Matcher::new(["2001:db8::1", "2001:0db8:0::1"]), Err(MatcherError::DuplicateKey { .. })));
}

#[test]
fn rewriter_refuses_bad_values() {
    let map = BTreeMap::from([("db".to_string(), "pg:5432".to_string())]);
    assert!(matches!(Rewriter::new(&map), Err(MatcherError::InvalidValue { key, .. }) if key == "db"));
}

#[test]
fn ensure_idempotent_refuses_chains_swaps_and_self_maps() {
    assert!(
        matches!(rewriter(CHAIN).ensure_idempotent(), Err(MatcherError::NotIdempotent { key, names, .. }) if key == "a.example" && names == "b.example")
    );
    let swap = rewriter(&[("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")]);
    assert!(matches!(swap.ensure_idempotent(), Err(MatcherError::NotIdempotent { .. })));
    assert!(
        matches!(rewriter(&[("db", "DB")]).ensure_idempotent(), Err(MatcherError::MapsToItself { key }) if key == "db")
    );
    // A value that merely contains a key's letters is fine.
    rewriter(&[("db", "db-clone"), ("db.prod", "db.clone")]).ensure_idempotent().unwrap();
    rewriter(MAP).ensure_idempotent().unwrap();
}

#[test]
fn find_lines_reports_line_and_column() {
    let matcher = Matcher::new(["db", "10.0.0.1"]).unwrap();
    let text = b"# settings\r\nhost = db\r\nreplica = dbadmin\nurl=postgres://10.0.0.1/db";
    let found: Vec<(usize, usize, &str)> = matcher
        .find_lines(text)
        .iter()
        .map(|m| (m.line, m.column, std::str::from_utf8(&text[m.line_start..m.line_end]).unwrap()))
        .collect();
    // The `db` in the URL's path is a database, not a host.
    assert_eq!(found, [(2, 8, "host = db"), (4, 16, "url=postgres://10.0.0.1/db")]);
    assert_eq!(matcher.find_lines(text).iter().map(|m| m.needle).collect::<Vec<_>>(), [0, 1]);
}

// ---------------------------------------------------------------------------
// Properties. Texts are glued from keys, near misses and separators, so that
// keys often stand next to characters that do or do not end a token.

const KEYS: &[&str] = &["10.0.0.1", "10.0.0.2", "db", "db.prod.example", "2001:db8::1", "fe80::1", "cache"];
const NEAR_MISSES: &[&str] = &[
    "10.0.0.12",
    "110.0.0.1",
    "10.0.0.1.5",
    "dbadmin",
    "db-replica",
    "db_host",
    "mydb",
    "db.prod",
    "api.db.prod.example",
    "2001:db8::10",
    "2001:db8::1:5",
    "DB",
    "Db.Prod.Example",
    "2001:0DB8::0001",
    "cachet",
];
const SEPARATORS: &[&str] = &[
    " ", ":", ".", "/", "@", "=", "\"", "'", "\n", "[", "]", "-", "_", "1", "a", "f", "::", "%", ",", "é", "\r\n",
    "://", "",
];
/// Replacements: disjoint from the keys and the near misses.
const VALUES: &[&str] = &["10.99.0.1", "10.99.0.2", "pg", "pg.clone.example", "2001:db8:99::1", "fe80::99", "kv-clone"];

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KEYS).prop_map(str::to_string),
        2 => proptest::sample::select(NEAR_MISSES).prop_map(str::to_string),
        4 => proptest::sample::select(SEPARATORS).prop_map(str::to_string),
        1 => "[a-z0-9.:_-]{0,4}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..24).prop_map(|parts| parts.concat())
}

/// A map from some of the keys to values, never naming a key.
fn map() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::sample::subsequence((0..KEYS.len()).collect::<Vec<_>>(), 1..=KEYS.len()).prop_flat_map(|keys| {
        let n = keys.len();
        (Just(keys), proptest::sample::subsequence((0..VALUES.len()).collect::<Vec<_>>(), n)).prop_map(
            |(keys, values)| {
                keys.iter().zip(values).map(|(&k, v)| (KEYS[k].to_string(), VALUES[v].to_string())).collect()
            },
        )
    })
}

/// The token a match stands in, by an independent rule: the longest run of
/// the kind's characters around it, where a `.` joins the run only if a run
/// character stands beyond it (IPv6: only on the right, between a hex digit
/// and a digit), and
/// for IPv6 a lone `:` at either end is trimmed. A whole-token match is
/// exactly that run.
fn surrounding_token(text: &[u8], m: Match, kind: TokenKind) -> &[u8] {
    let core = |b: u8| match kind {
        TokenKind::Hostname => is_host_byte(b),
        TokenKind::Ipv4 => b.is_ascii_digit(),
        TokenKind::Ipv6 => b.is_ascii_hexdigit() || b == b':',
    };
    let dot_joins = |beyond: Option<&u8>, right: bool| match kind {
        TokenKind::Hostname => beyond.is_some_and(|&b| is_host_byte(b)),
        TokenKind::Ipv4 => beyond.is_some_and(|b| b.is_ascii_digit()),
        TokenKind::Ipv6 => right && beyond.is_some_and(|b| b.is_ascii_digit()),
    };
    let mut start = m.start;
    while start > 0
        && (core(text[start - 1])
            || (text[start - 1] == b'.' && dot_joins(start.checked_sub(2).map(|i| &text[i]), false)))
    {
        start -= 1;
    }
    let mut end = m.end;
    while end < text.len()
        && (core(text[end])
            || (text[end] == b'.'
                && dot_joins(text.get(end + 1), true)
                && (kind != TokenKind::Ipv6 || text[end - 1] != b':')))
    {
        end += 1;
    }
    let mut run = &text[start..end];
    if kind == TokenKind::Ipv6 {
        if run.starts_with(b":") && !run.starts_with(b"::") {
            run = &run[1..];
        }
        if run.ends_with(b":") && !run.ends_with(b"::") {
            run = &run[..run.len() - 1];
        }
    }
    run
}

/// Whether a host name after `before` is a path segment: a single `/`
/// stands before it.
fn path_segment(before: &str) -> bool {
    before.ends_with('/') && !before.ends_with("//")
}

/// Whether `m` overlaps a part of a URL that names no host.
fn in_url_part(text: &[u8], m: Match) -> bool {
    url_masks(text).iter().any(|&(start, end)| start < m.end && m.start < end)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Replacing never changes text except where a whole token matched:
    /// every match of every pass is a spelling of its key that fills its
    /// whole token in the text of that pass, and putting back what each
    /// replaced span held gives the input again.
    #[test]
    fn rewrite_changes_only_whole_tokens(text in text(), map in map()) {
        let rewriter = Rewriter::new(&map).unwrap();
        let matcher = rewriter.matcher();
        let mut passes: Vec<(String, Vec<Match>)> = Vec::new();
        let (out, spans) = rewriter.rewrite_with_spans(&text, |t, found| passes.push((t.to_string(), found.to_vec())));
        for (pass_text, found) in &passes {
            for &m in found {
                let key = &matcher.needles()[m.needle];
                let kind = matcher.kind(m.needle);
                let spelled = &pass_text[m.start..m.end];
                prop_assert!(spellings(key, kind).iter().any(|s| s.eq_ignore_ascii_case(spelled)));
                let token = surrounding_token(pass_text.as_bytes(), m, kind);
                prop_assert!(token.eq_ignore_ascii_case(spelled.as_bytes()),
                    "{key} replaced inside {:?} in {pass_text:?}", String::from_utf8_lossy(token));
                let double_colon = kind == TokenKind::Hostname
                    && (pass_text[..m.start].ends_with("::") || pass_text[m.end..].starts_with("::"));
                prop_assert!(!double_colon, "host {key} replaced next to `::` in {pass_text:?}");
                let in_path = kind == TokenKind::Hostname && path_segment(&pass_text[..m.start]);
                prop_assert!(!in_path, "host {key} replaced after a single `/` in {pass_text:?}");
                prop_assert!(!in_url_part(pass_text.as_bytes(), m), "{key} replaced outside a URL's host in {pass_text:?}");
            }
        }
        let mut restored = String::new();
        let mut copied_to = 0;
        for r in &spans {
            prop_assert_eq!(&out.text[r.start..r.end], map[&matcher.needles()[r.needle]].as_str());
            restored.push_str(&out.text[copied_to..r.start]);
            restored.push_str(&r.original);
            copied_to = r.end;
        }
        restored.push_str(&out.text[copied_to..]);
        prop_assert_eq!(restored, text);
        prop_assert_eq!(out.total(), spans.len() as u64);
        prop_assert_eq!(passes.iter().map(|(_, f)| f.len()).sum::<usize>(), spans.len());
    }

    /// Every whole-token occurrence of a key is found (or lies inside a
    /// longer key that was).
    #[test]
    fn find_misses_no_whole_token(text in text()) {
        let matcher = Matcher::new(KEYS).unwrap();
        let bytes = text.as_bytes();
        let found: Vec<Match> = matcher.find_iter(bytes).collect();
        let lower = text.to_ascii_lowercase();
        for (needle, key) in KEYS.iter().enumerate() {
            let kind = matcher.kind(needle);
            for form in spellings(key, kind) {
                for (start, _) in lower.match_indices(&form) {
                    let m = Match { start, end: start + form.len(), needle };
                    let whole = surrounding_token(bytes, m, kind) == &lower.as_bytes()[m.start..m.end]
                        && !(kind == TokenKind::Hostname && (text[..start].ends_with("::") || text[m.end..].starts_with("::")))
                        && !(kind == TokenKind::Hostname && path_segment(&text[..start]))
                        && !in_url_part(bytes, m);
                    let covered = found.iter().any(|f| f.start < m.end && m.start < f.end);
                    prop_assert!(!whole || covered, "{key} at {start} not found in {text:?}");
                }
            }
        }
    }

    /// Applying a map and then scanning for its old keys finds none of them.
    #[test]
    fn scan_after_rewrite_finds_no_old_key(text in text(), map in map()) {
        let rewriter = Rewriter::new(&map).unwrap();
        rewriter.ensure_idempotent().unwrap();
        let out = rewriter.rewrite(&text).text;
        let scanner = Matcher::new(map.keys()).unwrap();
        let left: Vec<Match> = scanner.find_iter(out.as_bytes()).collect();
        prop_assert!(left.is_empty(), "{text:?} -> {out:?} still names {:?}", left.iter().map(|m| &out[m.start..m.end]).collect::<Vec<_>>());
    }

    /// A second run of the same map changes nothing.
    #[test]
    fn rewrite_is_idempotent(text in text(), map in map()) {
        let rewriter = Rewriter::new(&map).unwrap();
        let once = rewriter.rewrite(&text);
        let twice = rewriter.rewrite(&once.text);
        prop_assert_eq!(&twice.text, &once.text);
        prop_assert_eq!(twice.total(), 0);
    }

    /// Any text at all: no panic, and no match means no change.
    #[test]
    fn rewrite_never_panics(text in any::<String>()) {
        let rewriter = rewriter(MAP);
        let out = rewriter.rewrite(&text);
        if out.total() == 0 {
            prop_assert_eq!(out.text, text);
        }
    }

    /// Every needle the matcher accepts is found in a text that is just it.
    #[test]
    fn classified_tokens_match_themselves(token in "[a-z0-9_-]{1,10}(\\.[a-z0-9_-]{1,10}){0,3}") {
        if classify(&token).is_some() {
            let matcher = Matcher::new([&token]).unwrap();
            let found: Vec<Match> = matcher.find_iter(token.as_bytes()).collect();
            prop_assert_eq!(found, vec![Match { start: 0, end: token.len(), needle: 0 }]);
        }
    }
}

#[test]
fn a_key_exposed_by_a_replacement_is_replaced_in_a_later_pass() {
    // `fe80::1` is continued by the hex of `cache` until `cache` becomes
    // `pg`; `xyz` stays continued by `f` whatever happens to its right.
    let rewriter = rewriter(&[("fe80::1", "2001:db8::9"), ("cache", "pg"), ("xyz", "abc")]);
    let mut passes = 0;
    let (out, _) = rewriter.rewrite_with_spans("fe80::1:cache xyzfe80::1:cache", |_, _| passes += 1);
    assert_eq!(out.text, "2001:db8::9:pg xyz2001:db8::9:pg");
    assert_eq!(passes, 2);
}
