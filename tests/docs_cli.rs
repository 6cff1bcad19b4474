//! The docs hold to the code: every `envclone ...` command line in
//! README.md and docs/**/*.md parses with the real command line
//! ([`envclone::cli::Cli`]), and every relative link there points to a file
//! (and, for `page.md#anchor`, a heading) that exists.
//!
//! Command lines come from two places:
//! - lines of code blocks (not toml/json/rust ones) that start with
//!   `envclone ` (or `target/release/envclone `, `target/debug/envclone `),
//!   after a `$ ` or `# ` prompt; they are split as a shell would, a
//!   trailing `# comment` dropped, and cut at the first `|`, `;`, `&&` or
//!   redirection (what follows is a pipeline's later part);
//! - inline `code` spans that start with `envclone `. A span with `[...]`,
//!   `a|b` or `...` is a synopsis (`envclone check [--live [ENV]]`): it is
//!   checked with every optional part in and with every optional part out,
//!   once per alternative of its `a|b` choices.
//!
//! Placeholders (ENV, SB, NAME, `<undo>`) are plain words and parse as
//! such; where an option takes a typed value (a duration, a time, one of a
//! fixed set), the docs write a real one. A span that only names a command
//! (`envclone ssh`, `envclone snapshot --memory`: no placeholder, operands
//! left out) must have every word right but need not be complete.

// A test crate: a failed unwrap or expect is the test's failure report.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::Parser;
use envclone::cli::Cli;

/// Fewer than this many command lines found means the extractor broke, not
/// that the docs stopped naming commands.
const MIN_COMMAND_LINES: usize = 60;
/// Likewise for relative links.
const MIN_RELATIVE_LINKS: usize = 20;

/// Code block languages whose lines are not shell.
const NOT_SHELL: &[&str] = &["toml", "json", "rust", "mermaid"];

/// Prefixes under which a line names the envclone binary.
const PROGRAMS: &[&str] = &["envclone ", "target/release/envclone ", "target/debug/envclone "];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// A line of a code block: a command as typed.
    Typed,
    /// An inline span: a command as typed, or a synopsis.
    Inline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mention {
    file: PathBuf,
    line: usize,
    text: String,
    form: Form,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LineKind {
    Prose,
    Fence,
    Code { lang: String },
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/**/*.md, sorted.
fn doc_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                found.push(path);
            }
        }
    }
    let mut files = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut files);
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// What each line of a Markdown text is: prose, a fence, or code (with the
/// block's language).
fn line_kinds(text: &str) -> Vec<LineKind> {
    let mut open: Option<String> = None;
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("```") {
                open = match open.take() {
                    Some(_) => None,
                    None => Some(trimmed.trim_start_matches('`').trim().to_owned()),
                };
                LineKind::Fence
            } else {
                match &open {
                    Some(lang) => LineKind::Code { lang: lang.clone() },
                    None => LineKind::Prose,
                }
            }
        })
        .collect()
}

/// The text after a program prefix, with the prefix normalised to
/// `envclone `; `None` when the text does not name envclone first.
fn envclone_command(text: &str) -> Option<String> {
    PROGRAMS.iter().find_map(|prefix| text.strip_prefix(prefix).map(|rest| format!("envclone {rest}")))
}

/// Every envclone command line of one Markdown file.
fn mentions(file: &Path, text: &str) -> Vec<Mention> {
    let kinds = line_kinds(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();

    // Code blocks: one command per line (continued lines joined), prompts
    // stripped; a line continuing the one before is that command's part.
    let mut index = 0;
    while index < lines.len() {
        let start = index;
        index += 1;
        let LineKind::Code { lang } = &kinds[start] else { continue };
        if NOT_SHELL.contains(&lang.as_str()) {
            continue;
        }
        let mut line = lines[start].trim().to_owned();
        while line.ends_with('\\') && index < lines.len() && matches!(kinds[index], LineKind::Code { .. }) {
            line.pop();
            line.push(' ');
            line.push_str(lines[index].trim());
            index += 1;
        }
        let unprompted = line.strip_prefix("$ ").or_else(|| line.strip_prefix("# ")).unwrap_or(&line).trim_start();
        if let Some(command) = envclone_command(unprompted) {
            found.push(Mention { file: file.to_owned(), line: start + 1, text: command, form: Form::Typed });
        }
    }

    // Inline spans, which may run over a line break: the prose with code
    // blocks blanked, scanned for backtick runs.
    // A blockquote's `>` is not part of a span that runs over its lines.
    let prose: Vec<&str> = lines
        .iter()
        .zip(&kinds)
        .map(|(line, kind)| match kind {
            LineKind::Prose => line.trim_start().strip_prefix('>').unwrap_or(line),
            _ => "",
        })
        .collect();
    for (line, span) in code_spans(&prose.join("\n")) {
        if let Some(command) = envclone_command(span.trim()) {
            found.push(Mention { file: file.to_owned(), line, text: command, form: Form::Inline });
        }
    }
    found
}

/// The inline code spans of `text` with the (1-based) line each starts on;
/// a line break inside a span reads as a space.
fn code_spans(text: &str) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'`' {
            at += 1;
            continue;
        }
        let run = bytes[at..].iter().take_while(|b| **b == b'`').count();
        let fence = &text[at..at + run];
        let body_start = at + run;
        // The closing run is a run of exactly the same length.
        let mut search = body_start;
        let mut close = None;
        while let Some(offset) = text[search..].find(fence) {
            let candidate = search + offset;
            let length = bytes[candidate..].iter().take_while(|b| **b == b'`').count();
            if length == run {
                close = Some(candidate);
                break;
            }
            search = candidate + length;
        }
        match close {
            Some(end) => {
                let line = text[..at].matches('\n').count() + 1;
                spans.push((line, text[body_start..end].replace('\n', " ")));
                at = end + run;
            }
            None => at = body_start,
        }
    }
    spans
}

/// One word of a command line, and whether any of it was quoted (a quoted
/// `|` is a word, not a pipe).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    text: String,
    quoted: bool,
}

/// Splits a command line as a shell would: quotes, backslashes, a `#`
/// starting a word begins a comment.
fn shell_words(line: &str) -> Result<Vec<Word>, String> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(current.take()),
            '#' if current.is_none() => break,
            '\'' => {
                let word = current.get_or_insert(Word { text: String::new(), quoted: true });
                word.quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.text.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let word = current.get_or_insert(Word { text: String::new(), quoted: true });
                word.quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.text.extend(chars.next()),
                        Some(c) => word.text.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                let word = current.get_or_insert(Word { text: String::new(), quoted: true });
                word.text.extend(chars.next());
            }
            c => current.get_or_insert(Word { text: String::new(), quoted: false }).text.push(c),
        }
    }
    words.extend(current);
    Ok(words)
}

/// Whether an unquoted word ends the command: a pipe, a list operator or a
/// redirection (`<undo>` is a placeholder, not a redirection).
fn ends_command(word: &Word) -> bool {
    const OPERATORS: &[&str] = &["|", "||", "&&", "&", ";", ">", ">>", "<", "2>", "2>&1", "&>"];
    !word.quoted && OPERATORS.contains(&word.text.as_str())
}

/// A command as typed: its words up to the first operator.
fn typed_argv(text: &str) -> Result<Vec<String>, String> {
    let words = shell_words(text)?;
    Ok(words.into_iter().take_while(|w| !ends_command(w)).map(|w| w.text).collect())
}

fn is_synopsis(text: &str) -> bool {
    text.contains('[') || text.contains('|') || text.contains("...")
}

/// A synopsis item: a word, or an optional group.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Word(String),
    Optional(Vec<Item>),
}

fn parse_synopsis(text: &str) -> Result<Vec<Item>, String> {
    fn group(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, nested: bool) -> Result<Vec<Item>, String> {
        let mut items = Vec::new();
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                '[' => {
                    if !word.is_empty() {
                        items.push(Item::Word(std::mem::take(&mut word)));
                    }
                    items.push(Item::Optional(group(chars, true)?));
                }
                ']' if nested => {
                    if !word.is_empty() {
                        items.push(Item::Word(word));
                    }
                    return Ok(items);
                }
                ']' => return Err("']' without '['".into()),
                c if c.is_whitespace() => {
                    if !word.is_empty() {
                        items.push(Item::Word(std::mem::take(&mut word)));
                    }
                }
                c => word.push(c),
            }
        }
        if nested {
            return Err("'[' without ']'".into());
        }
        if !word.is_empty() {
            items.push(Item::Word(word));
        }
        Ok(items)
    }
    group(&mut text.replace("\\|", "|").chars().peekable(), false)
}

/// The words of a synopsis with every optional group in (`all_in`) or out.
fn flatten(items: &[Item], all_in: bool, into: &mut Vec<String>) {
    for item in items {
        match item {
            Item::Word(word) => into.push(word.clone()),
            Item::Optional(inner) if all_in => flatten(inner, all_in, into),
            Item::Optional(_) => {}
        }
    }
}

/// The command lines a synopsis stands for: optional parts all in and all
/// out, each once per alternative of its `a|b` words (the i-th alternative
/// of every choice together); `...` repetition marks dropped.
fn synopsis_argvs(text: &str) -> Result<Vec<Vec<String>>, String> {
    let items = parse_synopsis(text)?;
    let mut argvs = Vec::new();
    for all_in in [true, false] {
        let mut words = Vec::new();
        flatten(&items, all_in, &mut words);
        let words: Vec<String> = words
            .into_iter()
            .map(|w| w.trim_end_matches("...").trim_end_matches(',').to_owned())
            .filter(|w| !w.is_empty())
            .collect();
        let choices = words.iter().map(|w| w.split('|').count()).max().unwrap_or(1);
        for pick in 0..choices {
            let argv: Vec<String> = words
                .iter()
                .map(|w| {
                    let alternatives: Vec<&str> = w.split('|').collect();
                    alternatives[pick.min(alternatives.len() - 1)].to_owned()
                })
                .collect();
            if !argvs.contains(&argv) {
                argvs.push(argv);
            }
        }
    }
    Ok(argvs)
}

/// The argument vectors a mention stands for.
fn argvs(mention: &Mention) -> Result<Vec<Vec<String>>, String> {
    match mention.form {
        Form::Inline if is_synopsis(&mention.text) => synopsis_argvs(&mention.text),
        Form::Typed | Form::Inline => typed_argv(&mention.text).map(|argv| vec![argv]),
    }
}

/// A placeholder word: ENV, SB, NEW, CMD (capitals, digits, `-`, `_`).
fn is_placeholder(word: &str) -> bool {
    word.len() > 1
        && word.chars().any(|c| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `argv` parses with the real CLI; `--help` and `--version` count.
/// An inline span that names a command without its operands (`envclone
/// ssh`, `envclone snapshot --memory`, no placeholder in it) only needs
/// every word it has to be right; a line with operands must be complete.
fn parses(argv: &[String], form: &Form) -> Result<(), String> {
    let names_a_command = *form == Form::Inline && !argv.iter().any(|w| is_placeholder(w));
    match Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => Ok(()),
        Err(e)
            if names_a_command
                && matches!(
                    e.kind(),
                    ErrorKind::MissingRequiredArgument
                        | ErrorKind::MissingSubcommand
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_owned()),
    }
}

fn check(mention: &Mention) -> Result<(), String> {
    for argv in argvs(mention)? {
        parses(&argv, &mention.form).map_err(|e| format!("`{}`: {e}", argv.join(" ")))?;
    }
    Ok(())
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).display().to_string()
}

#[test]
fn every_envclone_command_line_in_the_docs_parses() {
    let all: Vec<Mention> = doc_files().iter().flat_map(|file| mentions(file, &read(file))).collect();

    let failures: Vec<String> = all
        .iter()
        .filter_map(|m| check(m).err().map(|e| format!("{}:{}: {}\n    {e}", relative(&m.file), m.line, m.text)))
        .collect();

    println!("{} envclone command lines checked", all.len());
    assert!(
        failures.is_empty(),
        "{} command line(s) in the docs do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(all.len() > MIN_COMMAND_LINES, "only {} envclone command lines found in the docs", all.len());
}

// --- links ---

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// to dashes.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    text.lines()
        .zip(line_kinds(text))
        .filter(|(_, kind)| *kind == LineKind::Prose)
        .filter_map(|(line, _)| line.strip_prefix('#'))
        .map(|heading| slug(heading.trim_start_matches('#')))
        .collect()
}

/// Every `](target)` of the prose outside code spans, with its line.
fn links(text: &str) -> Vec<(usize, String)> {
    let kinds = line_kinds(text);
    let mut found = Vec::new();
    for (index, (line, kind)) in text.lines().zip(&kinds).enumerate() {
        if *kind != LineKind::Prose {
            continue;
        }
        let mut plain = line.to_owned();
        for (_, span) in code_spans(line) {
            plain = plain.replacen(&format!("`{span}`"), "", 1);
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            found.push((index + 1, after[..end].to_owned()));
            rest = &after[end..];
        }
    }
    found
}

/// Why a relative link of `file` does not resolve; `None` when it does.
fn broken(file: &Path, target: &str) -> Option<String> {
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let resolved = if path.is_empty() { file.to_owned() } else { file.parent().expect("a parent").join(path) };
    if !resolved.exists() {
        return Some(format!("{} does not exist", relative(&resolved)));
    }
    let is_markdown = resolved.extension().is_some_and(|ext| ext == "md");
    if !anchor.is_empty() && is_markdown && !anchors(&read(&resolved)).contains(anchor) {
        return Some(format!("{} has no heading #{anchor}", relative(&resolved)));
    }
    None
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in doc_files() {
        for (line, target) in links(&read(&file)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if let Some(why) = broken(&file, &target) {
                failures.push(format!("{}:{line}: ({target}): {why}", relative(&file)));
            }
        }
    }

    println!("{checked} relative links checked");
    assert!(failures.is_empty(), "{} broken link(s) in the docs:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > MIN_RELATIVE_LINKS, "only {checked} relative links found in the docs");
}

// --- the checker itself: it must find commands and refuse wrong ones ---

#[test]
fn extractor_finds_prompted_continued_and_inline_commands() {
    let text = "Run `envclone check --live\ndemo` first.\n\n```sh\n$ envclone status   # all\n\
                target/release/envclone clone demo \\\n  --name c1\nip netns exec x curl y\n```\n\n\
                ```toml\n# envclone snapshot demo\n```\n";

    let found = mentions(Path::new("x.md"), text);

    let texts: Vec<(usize, &str)> = found.iter().map(|m| (m.line, m.text.as_str())).collect();
    assert_eq!(
        texts,
        [(5, "envclone status   # all"), (6, "envclone clone demo  --name c1"), (1, "envclone check --live demo")]
    );
}

#[test]
fn typed_line_is_cut_at_a_pipe_and_its_comment_dropped() {
    let argv = typed_argv("envclone --json status demo | jq '.a | .b' # why").unwrap();

    assert_eq!(argv, ["envclone", "--json", "status", "demo"]);
}

#[test]
fn synopsis_stands_for_all_in_all_out_and_each_alternative() {
    let argvs = synopsis_argvs("envclone check [--live [ENV]] [--quiesce a\\|b] [-- CMD...]").unwrap();

    let lines: Vec<String> = argvs.iter().map(|a| a.join(" ")).collect();
    assert_eq!(
        lines,
        [
            "envclone check --live ENV --quiesce a -- CMD",
            "envclone check --live ENV --quiesce b -- CMD",
            "envclone check"
        ]
    );
}

#[test]
fn checker_refuses_an_unknown_flag() {
    let mention = Mention {
        file: "x.md".into(),
        line: 1,
        text: "envclone snapshot demo --no-such-flag".into(),
        form: Form::Typed,
    };

    assert!(check(&mention).is_err());
}

#[test]
fn checker_refuses_a_placeholder_where_a_value_is_typed() {
    let mention = Mention {
        file: "x.md".into(),
        line: 1,
        text: "envclone clone ENV --name NEW [--disks linked\\|copied]".into(),
        form: Form::Inline,
    };

    assert!(check(&mention).is_err());
}

#[test]
fn checker_takes_a_command_named_without_operands_but_not_one_with_them_missing() {
    let named = Mention { file: "x.md".into(), line: 1, text: "envclone snapshot --memory".into(), form: Form::Inline };
    let incomplete =
        Mention { file: "x.md".into(), line: 1, text: "envclone clone ENV --disks linked".into(), form: Form::Inline };
    let typed = Mention { file: "x.md".into(), line: 1, text: "envclone snapshot --memory".into(), form: Form::Typed };

    assert!(check(&named).is_ok());
    assert!(check(&incomplete).is_err());
    assert!(check(&typed).is_err());
}

#[test]
fn link_checker_refuses_a_missing_file_and_a_missing_heading() {
    let readme = repo().join("README.md");

    assert!(broken(&readme, "docs/no-such-page.md").is_some());
    assert!(broken(&readme, "docs/clones.md#no-such-heading").is_some());
    assert!(broken(&readme, "docs/clones.md").is_none());
}

#[test]
fn slug_is_githubs() {
    assert_eq!(slug("Home sync while the standby serves"), "home-sync-while-the-standby-serves");
    assert_eq!(slug("Standby, failover and failback"), "standby-failover-and-failback");
    assert_eq!(slug("`envclone recover`: after a crash"), "envclone-recover-after-a-crash");
}
