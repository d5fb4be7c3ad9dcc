//! Splitting SQL text into statements at `;`, for `-c`, `-f`, piped input and the
//! prompt (which needs to know whether the last statement is finished).

/// The statements of some SQL text.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Split {
    /// Statements ended by `;`, trimmed, comments removed, empty ones dropped.
    pub complete: Vec<String>,
    /// The text after the last `;` when it holds more than blanks and comments
    /// (or an open quote or comment), as written.
    pub rest: String,
}

impl Split {
    /// Every statement, the unterminated last one included (for whole scripts).
    pub(crate) fn all(self) -> Vec<String> {
        let mut out = self.complete;
        if !self.rest.is_empty() {
            out.push(self.rest);
        }
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    Quoted(char),
    LineComment,
    BlockComment,
}

/// Splits `sql` at `;` outside quotes (`'…'`, `"…"`, doubled quotes included) and
/// comments (`-- …`, `/* … */`).
pub(crate) fn split(sql: &str) -> Split {
    let mut complete = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut state = State::Code;
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        state = match state {
            State::Quoted(q) => {
                current.push(c);
                if c == q {
                    State::Code
                } else {
                    state
                }
            }
            State::LineComment if c == '\n' => {
                current.push('\n');
                State::Code
            }
            State::LineComment => state,
            State::BlockComment if c == '*' && next == Some('/') => {
                chars.next();
                current.push(' ');
                State::Code
            }
            State::BlockComment => state,
            State::Code => match c {
                '\'' | '"' => {
                    current.push(c);
                    State::Quoted(c)
                }
                '-' if next == Some('-') => State::LineComment,
                '/' if next == Some('*') => {
                    chars.next();
                    State::BlockComment
                }
                ';' => {
                    let statement = std::mem::take(&mut current);
                    if !statement.trim().is_empty() {
                        complete.push(statement.trim().to_string());
                    }
                    start = i + 1;
                    State::Code
                }
                _ => {
                    current.push(c);
                    State::Code
                }
            },
        };
    }
    let open = matches!(state, State::Quoted(_) | State::BlockComment);
    let rest = if open || !current.trim().is_empty() {
        sql[start..].trim().to_string()
    } else {
        String::new()
    };
    Split { complete, rest }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        let sql = "SELECT 'a;b'; -- a comment; with a semicolon\nSELECT \"x;y\" ;; \n\
                   SELECT /* ; */ 'it''s;' ; CALL f(1)";
        let split = split(sql);
        assert_eq!(
            split.complete,
            vec!["SELECT 'a;b'", "SELECT \"x;y\"", "SELECT   'it''s;'"]
        );
        assert_eq!(split.rest, "CALL f(1)");
        assert_eq!(split.all().len(), 4);
    }

    #[test]
    fn knows_when_the_last_statement_is_unfinished() {
        assert_eq!(split("SELECT 1;\n-- done\n").rest, "");
        assert_eq!(split("SELECT 1;  ").rest, "");
        assert_eq!(split("SELECT 1; SELECT\n  2").rest, "SELECT\n  2");
        assert_eq!(split("SELECT 'a;").rest, "SELECT 'a;");
        assert_eq!(split("SELECT 1 /* ; ").rest, "SELECT 1 /* ;");
        assert!(split("SELECT 'a;").complete.is_empty());
        assert_eq!(split("").all(), Vec::<String>::new());
    }
}
