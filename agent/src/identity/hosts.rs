//! Editing /etc/hosts for a host that changed address and/or name, as a
//! pure function of the file's text: the entry for this host moves to the
//! new address and name, every other line (comments, other hosts, IPv6)
//! stays byte for byte, and a second run changes nothing.

use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone)]
pub struct HostsEdit<'a> {
    /// Addresses this host had: lines for them move to `new_address`.
    pub old_addresses: &'a [Ipv4Addr],
    pub new_address: Ipv4Addr,
    /// The name this host had: it becomes `new_hostname` wherever it is
    /// listed, as itself or as the first label of a longer name.
    pub old_hostname: &'a str,
    pub new_hostname: &'a str,
}

/// Returns the edited text. When no line maps this host at all afterwards
/// (neither its new address to its name nor any address to its name), a line
/// `<new address> <new hostname>` is appended.
pub fn edit(text: &str, edit: &HostsEdit) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut host_listed = false;
    for line in text.split_inclusive('\n') {
        let edited = edit_line(line, edit);
        host_listed |= names_this_host(&edited, edit);
        out.push_str(&edited);
    }
    if !host_listed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{}\t{}\n", edit.new_address, edit.new_hostname));
    }
    out
}

/// Byte ranges of the whitespace-separated words of `body`.
fn words(body: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut start = None;
    for (i, c) in body.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                ranges.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        ranges.push((s, body.len()));
    }
    ranges
}

/// The part of a line before its comment.
fn body(line: &str) -> &str {
    line.split('#').next().unwrap_or("")
}

fn edit_line(line: &str, edit: &HostsEdit) -> String {
    let body_len = body(line).len();
    let ranges = words(&line[..body_len]);
    if ranges.len() < 2 {
        return line.to_string();
    }
    let mut replaced: Vec<Option<String>> = vec![None; ranges.len()];
    let (start, end) = ranges[0];
    if let Ok(IpAddr::V4(address)) = line[start..end].parse::<IpAddr>() {
        if edit.old_addresses.contains(&address) && address != edit.new_address {
            replaced[0] = Some(edit.new_address.to_string());
        }
    }
    for (slot, &(start, end)) in replaced.iter_mut().zip(&ranges).skip(1) {
        *slot = rename(&line[start..end], edit.old_hostname, edit.new_hostname);
    }
    if replaced.iter().all(Option::is_none) {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len() + 16);
    let mut at = 0;
    for (&(start, end), new) in ranges.iter().zip(&replaced) {
        if let Some(new) = new {
            out.push_str(&line[at..start]);
            out.push_str(new);
            at = end;
        }
    }
    out.push_str(&line[at..]);
    out
}

/// `old` itself, or `old.domain`, renamed; None when `name` is neither.
fn rename(name: &str, old: &str, new: &str) -> Option<String> {
    if old.is_empty() || old.eq_ignore_ascii_case(new) {
        return None;
    }
    if name.eq_ignore_ascii_case(old) {
        return Some(new.to_string());
    }
    let head = name.get(..old.len())?;
    let rest = &name[old.len()..];
    (head.eq_ignore_ascii_case(old) && rest.starts_with('.')).then(|| format!("{new}{rest}"))
}

fn names_this_host(line: &str, edit: &HostsEdit) -> bool {
    let body = body(line);
    let mut words = body.split_whitespace();
    let Some(_address) = words.next() else { return false };
    words.any(|name| {
        name.eq_ignore_ascii_case(edit.new_hostname)
            || name.get(..edit.new_hostname.len()).is_some_and(|head| {
                head.eq_ignore_ascii_case(edit.new_hostname) && name[edit.new_hostname.len()..].starts_with('.')
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LAB_HOSTS: &str = "127.0.0.1 localhost\n10.77.1.11 web\n10.77.1.12 db\n";
    const OLD: [Ipv4Addr; 1] = [Ipv4Addr::new(10, 77, 1, 12)];

    fn move_db(text: &str) -> String {
        edit(
            text,
            &HostsEdit {
                old_addresses: &OLD,
                new_address: Ipv4Addr::new(10, 77, 1, 42),
                old_hostname: "db",
                new_hostname: "db2",
            },
        )
    }

    #[test]
    fn moves_this_hosts_line_and_keeps_the_others() {
        assert_eq!(move_db(LAB_HOSTS), "127.0.0.1 localhost\n10.77.1.11 web\n10.77.1.42 db2\n");
    }

    #[test]
    fn keeps_comments_spacing_aliases_and_ipv6() {
        let text = "# static table\n127.0.0.1\tlocalhost\n::1 localhost ip6-localhost # v6\n\n\
                    10.77.1.12\tdb  db.lab.example dbalias # the database\n10.77.1.11 web\n";
        let want = "# static table\n127.0.0.1\tlocalhost\n::1 localhost ip6-localhost # v6\n\n\
                    10.77.1.42\tdb2  db2.lab.example dbalias # the database\n10.77.1.11 web\n";
        assert_eq!(move_db(text), want);
    }

    #[test]
    fn renames_the_host_on_debians_loopback_line_without_appending() {
        let text = "127.0.0.1 localhost\n127.0.1.1 db.lab db\n";
        assert_eq!(move_db(text), "127.0.0.1 localhost\n127.0.1.1 db2.lab db2\n");
    }

    #[test]
    fn leaves_names_that_only_contain_the_old_name() {
        let text = "10.0.0.9 dbserver db-old xdb\n10.77.1.12 db\n";
        assert_eq!(move_db(text), "10.0.0.9 dbserver db-old xdb\n10.77.1.42 db2\n");
    }

    #[test]
    fn appends_an_entry_when_the_host_was_not_listed() {
        assert_eq!(move_db("127.0.0.1 localhost"), "127.0.0.1 localhost\n10.77.1.42\tdb2\n");
        assert_eq!(move_db(""), "10.77.1.42\tdb2\n");
    }

    #[test]
    fn address_only_change_keeps_the_name() {
        let text = edit(
            LAB_HOSTS,
            &HostsEdit {
                old_addresses: &OLD,
                new_address: Ipv4Addr::new(10, 88, 1, 12),
                old_hostname: "db",
                new_hostname: "db",
            },
        );
        assert_eq!(text, "127.0.0.1 localhost\n10.77.1.11 web\n10.88.1.12 db\n");
    }

    #[test]
    fn is_idempotent() {
        let once = move_db(LAB_HOSTS);
        assert_eq!(move_db(&once), once);
    }

    /// Every file of up to four lines drawn from a set of tricky ones (which
    /// random text rarely hits): a second run changes nothing and every
    /// comment line survives.
    #[test]
    fn second_run_changes_nothing_and_comments_survive() {
        let pieces = [
            "10.77.1.12 db",
            "# db 10.77.1.12",
            "127.0.1.1 db.lab db",
            "10.77.1.11 web",
            "10.77.1.42 db2",
            "",
            "  10.77.1.12\tdb # trailing",
            "DB",
        ];
        let mut files = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> =
                files.iter().flat_map(|f| pieces.iter().map(move |p| format!("{f}{p}\n"))).collect();
            files.extend(longer.into_iter().filter(|f| f.lines().count() <= 4));
            files.sort();
            files.dedup();
        }
        assert!(files.len() > 1000);
        for text in &files {
            let once = move_db(text);
            assert_eq!(move_db(&once), once, "{text:?}");
            for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
                assert!(once.lines().any(|l| l == line), "comment {line:?} lost from {text:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn any_text_edits_idempotently_and_keeps_comment_lines(text in "[ -~\t\n]{0,200}") {
            let once = move_db(&text);
            prop_assert_eq!(move_db(&once), once.clone());
            for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
                prop_assert!(once.lines().any(|l| l == line), "comment {:?} lost", line);
            }
        }
    }
}
