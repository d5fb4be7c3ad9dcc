//! The interactive prompt: line editing and history (rustyline), statements over
//! several lines (run when a line ends one with `;`), Ctrl-C to drop the statement
//! being typed or to cancel the one running, Ctrl-D or `\q` to leave.

use std::path::PathBuf;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::statements::split;
use super::Shell;

const PROMPT: &str = "dvi> ";
const CONTINUE: &str = "  -> ";

/// `$DVI_HISTORY`, or `~/.dvi_history`.
fn history_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DVI_HISTORY") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".dvi_history"))
}

/// Lines typed so far, and what they make.
#[derive(Debug, Default)]
pub(crate) struct Input {
    buffer: String,
}

impl Input {
    /// Adds a typed line; returns the statements it finished.
    pub(crate) fn push_line(&mut self, line: &str) -> Vec<String> {
        if !self.buffer.is_empty() {
            self.buffer.push('\n');
        }
        self.buffer.push_str(line);
        let split = split(&self.buffer);
        self.buffer = split.rest;
        split.complete
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.buffer.clear();
    }
}

/// Whether `line`, typed at an empty prompt, asks to leave.
pub(crate) fn is_quit(line: &str) -> bool {
    matches!(line.trim(), "\\q" | "quit" | "exit" | "quit;" | "exit;")
}

/// Runs the prompt until Ctrl-D or `\q`. Failing statements print their error and
/// the prompt goes on.
pub(crate) fn run(shell: &Shell) -> Result<(), String> {
    let mut editor = DefaultEditor::new().map_err(|e| format!("cannot start the prompt: {e}"))?;
    let history = history_file();
    if let Some(path) = &history {
        // A first run has no history yet.
        let _ = editor.load_history(path);
    }
    println!(
        "dvi {} — statements end with ';', \\q to quit",
        env!("CARGO_PKG_VERSION")
    );
    let mut input = Input::default();
    loop {
        let prompt = if input.is_empty() { PROMPT } else { CONTINUE };
        match editor.readline(prompt) {
            Ok(line) => {
                if input.is_empty() && is_quit(&line) {
                    break;
                }
                for statement in input.push_line(&line) {
                    let _ = editor.add_history_entry(format!("{statement};"));
                    if let Err(message) = shell.run_interruptible(&statement) {
                        eprintln!("dvi: {message}");
                    }
                }
            }
            Err(ReadlineError::Interrupted) => input.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(format!("cannot read the prompt: {e}")),
        }
    }
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            eprintln!("dvi: cannot save the history to {}: {e}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_run_when_a_line_ends_them() {
        let mut input = Input::default();
        assert!(input.push_line("SELECT").is_empty());
        assert!(!input.is_empty());
        assert!(input.push_line("  'a;b' AS x").is_empty());
        assert_eq!(
            input.push_line("; SELECT 2; SELECT"),
            vec!["SELECT\n  'a;b' AS x", "SELECT 2"]
        );
        assert_eq!(input.push_line("3;"), vec!["SELECT\n3"]);
        assert!(input.is_empty());
        assert!(input.push_line("-- only a comment").is_empty());
        assert!(input.is_empty());
        assert!(is_quit(" \\q ") && is_quit("exit") && !is_quit("SELECT 1"));
    }
}
