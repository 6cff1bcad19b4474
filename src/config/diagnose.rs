//! Turns serde/TOML errors and semantic problems into located diagnostics
//! with a hint on how to fix them.

use std::path::Path;

use super::error::Diagnostic;
use super::locate::{KeyPath, Locator, Position};
use super::validate::Problem;

pub fn from_problems(problems: Vec<Problem>, text: &str, file: &Path) -> Vec<Diagnostic> {
    let locator = Locator::new(text);
    let mut diagnostics: Vec<Diagnostic> = problems
        .into_iter()
        .map(|problem| {
            let position = locator.position_of_path(&problem.path);
            diagnostic(file, position, &problem.path, problem.message, problem.hint)
        })
        .collect();
    diagnostics.sort_by(|a, b| (a.line, a.column, &a.key).cmp(&(b.line, b.column, &b.key)));
    diagnostics
}

pub fn from_toml_error(error: &toml::de::Error, text: &str, file: &Path) -> Diagnostic {
    let locator = Locator::new(text);
    // toml_edit puts some explanations on a line of their own; a diagnostic is one line.
    let message = error.message().trim().replace('\n', ": ");
    let message = message.as_str();
    let span = error.span();
    let spanned_path = span.as_ref().map(|span| locator.path_at_span(span)).unwrap_or_default();
    let position_of = |path: &KeyPath| match &span {
        Some(span) => locator.position_of_offset(span.start),
        None => locator.position_of_path(path),
    };

    if let Some(field) = quoted_after(message, "unknown field") {
        // serde points at the offending key itself; appending only guards
        // against a span that lands on the enclosing table instead.
        let path = match spanned_path.last_key() {
            Some(last) if last == field => spanned_path,
            _ => spanned_path.key(field),
        };
        let fix = unknown_key_hint(field, &expected_names(message));
        return diagnostic(file, position_of(&path), &path, format!("unknown key `{field}`"), Some(fix));
    }
    if let Some(field) = quoted_after(message, "missing field") {
        let fix = if spanned_path.is_root() {
            format!("add the [{field}] section")
        } else {
            format!("add `{field}` to [{spanned_path}]")
        };
        let position = position_of(&spanned_path);
        let path = spanned_path.key(field);
        return diagnostic(file, position, &path, format!("missing required key `{field}`"), Some(fix));
    }
    if let Some(value) = quoted_after(message, "unknown variant") {
        let fix = format!("use one of: {}", expected_names(message).join(", "));
        let message = format!("invalid value \"{value}\"");
        return diagnostic(file, position_of(&spanned_path), &spanned_path, message, Some(fix));
    }
    if !locator.is_toml() {
        return diagnostic(file, position_of(&spanned_path), &spanned_path, format!("invalid TOML: {message}"), None);
    }
    let (message, fix) = explain_type(message);
    diagnostic(file, position_of(&spanned_path), &spanned_path, message, fix)
}

fn diagnostic(file: &Path, position: Position, path: &KeyPath, message: String, hint: Option<String>) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: position.line,
        column: position.column,
        key: path.to_string(),
        message,
        hint,
    }
}

/// The first backquoted word after `prefix`, as serde writes field names.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.trim_start().strip_prefix('`')?;
    rest.split_once('`').map(|(word, _)| word)
}

/// The backquoted names after "expected" in a serde message.
fn expected_names(message: &str) -> Vec<&str> {
    let Some((_, list)) = message.split_once("expected") else {
        return Vec::new();
    };
    list.split('`').skip(1).step_by(2).collect()
}

fn unknown_key_hint(field: &str, valid: &[&str]) -> String {
    if valid.is_empty() {
        return "remove it: this table takes no keys".to_owned();
    }
    let list = valid.join(", ");
    let closest = valid
        .iter()
        .map(|candidate| (edit_distance(field, candidate), candidate))
        .min()
        .filter(|(distance, _)| *distance <= field.chars().count().div_ceil(3));
    match closest {
        Some((_, candidate)) => format!("did you mean `{candidate}`? valid keys here: {list}"),
        None => format!("valid keys here: {list}"),
    }
}

/// Replaces Rust type names in serde's "expected u16" with words and adds a hint.
fn explain_type(message: &str) -> (String, Option<String>) {
    const TYPES: [(&str, &str, &str); 4] = [
        ("u16", "a whole number", "write a whole number from 0 to 65535, without quotes"),
        ("u32", "a whole number", "write a whole number from 0 to 4294967295, without quotes"),
        ("a boolean", "a boolean", "write true or false, without quotes"),
        ("a sequence", "a list", "write a list, e.g. [\"a\", \"b\"]"),
    ];
    let Some((before, expected)) = message.rsplit_once("expected ") else {
        return (message.to_owned(), None);
    };
    match TYPES.iter().find(|(name, _, _)| *name == expected) {
        Some((_, words, hint)) => (format!("{before}expected {words}"), Some((*hint).to_owned())),
        None => (message.to_owned(), None),
    }
}

/// Levenshtein distance, for "did you mean" on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_out_of_serde_messages() {
        let message = "unknown field `portt`, expected one of `address`, `port`, `user`";
        assert_eq!(quoted_after(message, "unknown field"), Some("portt"));
        assert_eq!(expected_names(message), ["address", "port", "user"]);
        assert_eq!(quoted_after(message, "missing field"), None);
    }

    #[test]
    fn suggests_the_closest_key_only_when_close() {
        let valid = ["controller", "environments", "schedules"];
        assert!(unknown_key_hint("controler", &valid).starts_with("did you mean `controller`?"));
        assert!(unknown_key_hint("zzz", &valid).starts_with("valid keys here:"));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
