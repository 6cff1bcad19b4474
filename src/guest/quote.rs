//! POSIX shell quoting for the command line sent over SSH: the server hands
//! it to the login shell with `-c`, so every argument must reach the agent
//! as exactly one word, whatever it contains.

use std::borrow::Cow;

/// Quotes `arg` as one POSIX shell word. Plain words are left as they are so
/// that logs stay readable; anything else is single-quoted, the one quoting
/// in which nothing (`$`, `\`, backquotes, newlines) is special except `'`
/// itself, written as `'\''`. A NUL byte cannot be passed in an argument at
/// all; callers refuse it before quoting.
pub fn shell_quote(arg: &str) -> Cow<'_, str> {
    let plain = !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b));
    if plain {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// `program` followed by each argument quoted, separated by spaces.
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(shell_quote(program)).chain(args.iter().map(|a| shell_quote(a))).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    #[test]
    fn quotes_by_table() {
        let table = [
            ("status", "status"),
            ("--mount=/var/lib", "--mount=/var/lib"),
            ("", "''"),
            ("two words", "'two words'"),
            ("it's", r"'it'\''s'"),
            ("'", r"''\'''"),
            ("$HOME", "'$HOME'"),
            ("a\nb", "'a\nb'"),
            ("`id`", "'`id`'"),
            ("back\\slash", "'back\\slash'"),
            ("semi;colon", "'semi;colon'"),
            ("*", "'*'"),
            ("~root", "'~root'"),
            ("é", "'é'"),
        ];
        for (arg, want) in table {
            assert_eq!(shell_quote(arg), want, "{arg:?}");
        }
    }

    #[test]
    fn command_line_quotes_each_argument() {
        assert_eq!(
            command_line("envclone-agent", &["hook", "pre freeze", "$x"]),
            "envclone-agent hook 'pre freeze' '$x'"
        );
    }

    /// What a real `sh` makes of a quoted word is the ground truth.
    fn through_sh(word: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote(word))).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn sh_reads_tricky_words_back_unchanged() {
        for word in ["", "'", "''", "a'b\"c", "$(id)", "a\nb\n", "\\", "-n", "%s", "  lead", "!x"] {
            assert_eq!(through_sh(word), word, "{word:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn sh_reads_any_word_back_unchanged(word in "[^\u{0}]{0,24}") {
            prop_assert_eq!(through_sh(&word), word);
        }
    }
}
