//! Maps dotted key paths to line:column in the config text and back.
//!
//! serde only reports byte spans and our semantic checks only know key
//! paths; a second, span-preserving parse with `toml_edit` connects the two
//! so every diagnostic names both the key and where it is written.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// A path to a value in the config, printed the way TOML writes dotted keys:
/// `environments.demo.rewrite.map."db.prod.example"`, `networks[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub fn root() -> Self {
        Self::default()
    }

    pub fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    pub fn parent(&self) -> Option<Self> {
        let (_, parent) = self.0.split_last()?;
        Some(Self(parent.to_vec()))
    }

    pub fn last_key(&self) -> Option<&str> {
        match self.0.last()? {
            Segment::Key(key) => Some(key),
            Segment::Index(_) => None,
        }
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) if position > 0 => write!(f, ".{}", DisplayKey(key))?,
                Segment::Key(key) => write!(f, "{}", DisplayKey(key))?,
            }
        }
        Ok(())
    }
}

/// A key as TOML would need it written: bare when possible, quoted otherwise.
struct DisplayKey<'a>(&'a str);

impl fmt::Display for DisplayKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = !self.0.is_empty() && self.0.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if bare {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// A 1-based line and column (in characters) within the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    pub const START: Self = Self { line: 1, column: 1 };
}

struct Entry {
    path: KeyPath,
    key_span: Option<Range<usize>>,
    value_span: Option<Range<usize>>,
}

/// Key paths and their spans for one config text.
pub struct Locator<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    entries: Vec<Entry>,
    is_toml: bool,
}

impl<'a> Locator<'a> {
    /// Never fails: text that `toml_edit` cannot parse yields a locator that
    /// still converts offsets to positions but knows no keys.
    pub fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(offset, _)| offset + 1)).collect();
        let mut entries = Vec::new();
        let document = ImDocument::parse(text);
        if let Ok(document) = &document {
            collect_table(document.as_table(), &KeyPath::root(), &mut entries);
        }
        Self { text, line_starts, entries, is_toml: document.is_ok() }
    }

    /// Whether the text is valid TOML syntax; if not, no key is known.
    pub fn is_toml(&self) -> bool {
        self.is_toml
    }

    pub fn position_of_offset(&self, offset: usize) -> Position {
        let offset = offset.min(self.text.len());
        let line_index = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.line_starts[line_index];
        let column = match self.text.get(line_start..offset) {
            Some(prefix) => prefix.chars().count() + 1,
            None => offset - line_start + 1,
        };
        Position { line: line_index + 1, column }
    }

    /// Where `path` is written: its value for plain values, its header for
    /// tables. A path absent from the text (a defaulted field) falls back to
    /// its nearest written ancestor.
    pub fn position_of_path(&self, path: &KeyPath) -> Position {
        let mut current = Some(path.clone());
        while let Some(path) = current {
            let span = self
                .entries
                .iter()
                .find(|entry| entry.path == path)
                .and_then(|entry| entry.value_span.clone().or_else(|| entry.key_span.clone()));
            if let Some(span) = span {
                return self.position_of_offset(span.start);
            }
            current = path.parent();
        }
        Position::START
    }

    /// The path that `span` belongs to: the outermost entry whose key or
    /// value is exactly `span` (a table being deserialized; an array of one
    /// table shares its span with that table), else the deepest entry
    /// containing its start.
    pub fn path_at_span(&self, span: &Range<usize>) -> KeyPath {
        let outermost_exact = self
            .entries
            .iter()
            .filter(|entry| entry.key_span.as_ref() == Some(span) || entry.value_span.as_ref() == Some(span))
            .min_by_key(|entry| entry.path.0.len());
        let deepest_containing = || {
            self.entries
                .iter()
                .filter(|entry| {
                    [&entry.key_span, &entry.value_span]
                        .into_iter()
                        .flatten()
                        .any(|candidate| candidate.contains(&span.start))
                })
                .max_by_key(|entry| entry.path.0.len())
        };
        outermost_exact.or_else(deepest_containing).map(|entry| entry.path.clone()).unwrap_or_default()
    }
}

fn collect_table(table: &Table, parent: &KeyPath, entries: &mut Vec<Entry>) {
    for (key, item) in table.iter() {
        let path = parent.key(key);
        let key_span = table.key(key).and_then(|key| key.span());
        collect_item(item, path, key_span, entries);
    }
}

fn collect_item(item: &Item, path: KeyPath, key_span: Option<Range<usize>>, entries: &mut Vec<Entry>) {
    entries.push(Entry { path: path.clone(), key_span, value_span: item.span() });
    match item {
        Item::Table(table) => collect_table(table, &path, entries),
        Item::Value(value) => collect_value(value, &path, entries),
        Item::ArrayOfTables(tables) => {
            for (index, table) in tables.iter().enumerate() {
                let element = path.index(index);
                entries.push(Entry { path: element.clone(), key_span: None, value_span: table.span() });
                collect_table(table, &element, entries);
            }
        }
        Item::None => {}
    }
}

fn collect_value(value: &Value, path: &KeyPath, entries: &mut Vec<Entry>) {
    match value {
        Value::InlineTable(table) => {
            for (key, value) in table.iter() {
                let child = path.key(key);
                let key_span = table.key(key).and_then(|key| key.span());
                entries.push(Entry { path: child.clone(), key_span, value_span: value.span() });
                collect_value(value, &child, entries);
            }
        }
        Value::Array(array) => {
            for (index, value) in array.iter().enumerate() {
                let child = path.index(index);
                entries.push(Entry { path: child.clone(), key_span: None, value_span: value.span() });
                collect_value(value, &child, entries);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
[controller]
ssh_key = \"/k\"

[environments.demo]
networks = [\"a\", \"b\"]

[environments.demo.vms.web]
domain = \"demo-web\"
agent = { address = \"10.0.0.1\", port = 22 }

[environments.demo.rewrite.map]
\"db.prod\" = \"db.clone\"
";

    fn path(keys: &[&str]) -> KeyPath {
        keys.iter().fold(KeyPath::root(), |path, key| path.key(key))
    }

    #[test]
    fn key_path_display_quotes_keys_with_dots() {
        let path = path(&["environments", "demo", "rewrite", "map", "db.prod"]);
        assert_eq!(path.to_string(), r#"environments.demo.rewrite.map."db.prod""#);
        assert_eq!(KeyPath::root().key("networks").index(1).to_string(), "networks[1]");
    }

    #[test]
    fn positions_point_at_values_and_table_headers() {
        let locator = Locator::new(TEXT);
        let ssh_key = locator.position_of_path(&path(&["controller", "ssh_key"]));
        assert_eq!(ssh_key, Position { line: 2, column: 11 });
        let web = locator.position_of_path(&path(&["environments", "demo", "vms", "web"]));
        assert_eq!(web, Position { line: 7, column: 1 });
        let port = locator.position_of_path(&path(&["environments", "demo", "vms", "web", "agent", "port"]));
        assert_eq!(port, Position { line: 9, column: 40 });
        let second_network = locator.position_of_path(&path(&["environments", "demo", "networks"]).index(1));
        assert_eq!(second_network, Position { line: 5, column: 18 });
    }

    #[test]
    fn absent_paths_fall_back_to_their_parent() {
        let locator = Locator::new(TEXT);
        let defaulted = locator.position_of_path(&path(&["environments", "demo", "vms", "web", "agent", "user"]));
        assert_eq!(defaulted, Position { line: 9, column: 9 });
        assert_eq!(locator.position_of_path(&path(&["schedules", "x"])), Position::START);
    }

    #[test]
    fn span_resolves_to_the_deepest_key() {
        let locator = Locator::new(TEXT);
        let offset = TEXT.find("\"db.prod\"").unwrap();
        let found = locator.path_at_span(&(offset..offset + 9));
        assert_eq!(found, path(&["environments", "demo", "rewrite", "map", "db.prod"]));
    }

    #[test]
    fn offsets_count_characters_not_bytes() {
        let locator = Locator::new("a = \"é\"\nb = 1\n");
        assert_eq!(locator.position_of_offset(9), Position { line: 2, column: 1 });
        assert_eq!(locator.position_of_offset(7), Position { line: 1, column: 7 });
        assert_eq!(locator.position_of_offset(999), Position { line: 3, column: 1 });
    }
}
