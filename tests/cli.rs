//! The `dvi` binary as an operator runs it: `-c`, `-f`, piped stdin, output
//! formats, exit codes and one-line errors, progress on stderr, the prompt on a
//! real terminal (a pseudo-terminal), and README's 3-worker script.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DVI: &str = env!("CARGO_BIN_EXE_dvi");

/// Eight vectors of four dims in two fragments, and an index over them.
fn setup(index: &str) -> String {
    format!(
        "CREATE TABLE items AS SELECT \
           (CAST(value / 4 AS BIGINT UNSIGNED) << 32) + CAST(value % 4 AS BIGINT UNSIGNED) AS row_id, \
           make_array(sin(value), cos(value), value / 8.0, 1.0) AS vec \
         FROM generate_series(0, 7); \
         CALL create_vector_index(index => '{index}', table => 'items', column => 'vec', \
           type => 'IVF_FLAT', num_partitions => 2); \
         CALL build_vector_index_shard(index => '{index}', table => 'items', column => 'vec', \
           where => 'row_id >> 32 = 0'); \
         CALL build_vector_index_shard(index => '{index}', table => 'items', column => 'vec', \
           where => 'row_id >> 32 = 1');"
    )
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(DVI)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeds(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stderr),
        text(&output.stdout)
    );
    text(&output.stdout)
}

fn index_url(dir: &Path) -> String {
    format!("file://{}/idx", dir.display())
}

/// `--help` names every procedure and table function a session has, each
/// found by its name in the help text.
#[test]
fn help_lists_every_procedure_and_table_function() {
    use datafusion_vector_index::VectorIndexSession;
    let help = succeeds(&run(&["--help"], None));
    let names = VectorIndexSession::procedures()
        .into_iter()
        .chain(VectorIndexSession::table_functions());
    for name in names {
        let word =
            |w: &str| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_') == name;
        assert!(
            help.split_whitespace().any(word),
            "--help omits {name}:\n{help}"
        );
    }
    assert!(VectorIndexSession::procedures().contains(&"build_vector_index_shards"));
    assert_eq!(VectorIndexSession::table_functions().len(), 4);
}

#[test]
fn commands_files_and_piped_statements_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_url(dir.path());
    let script = dir.path().join("finalize.sql");
    std::fs::write(
        &script,
        format!(
            "-- the coordinator's step\nCALL finalize_vector_index(index => '{index}');\n\
             SELECT count(*) AS segments FROM vector_index_segments('{index}')"
        ),
    )
    .unwrap();
    let out = succeeds(&run(
        &["-c", &setup(&index), "-f", script.to_str().unwrap()],
        None,
    ));
    assert!(out.contains("| segments |"), "{out}");
    assert!(out.contains("| 1        |"), "{out}");

    // Piped stdin, no arguments: the statements of the pipe.
    let piped = format!(
        "SELECT row_id, distance\n  FROM vector_search('{index}', [0.0, 1.0, 0.0, 1.0], 1);\n\
         SELECT 'done' AS status;"
    );
    let out = succeeds(&run(&[], Some(&piped)));
    assert!(out.contains("| row_id | distance |"), "{out}");
    assert!(out.contains("| 0      | 0.0      |"), "{out}");
    assert!(out.contains("| done   |"), "{out}");
    // `-f -` reads stdin in its place among the sources.
    let out = succeeds(&run(
        &["-c", "SELECT 1 AS first", "-f", "-"],
        Some("SELECT 2 AS second"),
    ));
    assert!(out.find("first").unwrap() < out.find("second").unwrap());
}

#[test]
fn results_as_csv_and_json_lines() {
    let sql = "SELECT * FROM (VALUES (1, 'a,b'), (2, 'c')) AS t(id, name) ORDER BY id";
    let csv = succeeds(&run(&["--format", "csv", "-c", sql], None));
    assert_eq!(csv, "id,name\n1,\"a,b\"\n2,c\n");
    let json = succeeds(&run(&["--format=json", "-c", sql], None));
    assert_eq!(
        json,
        "{\"id\":1,\"name\":\"a,b\"}\n{\"id\":2,\"name\":\"c\"}\n"
    );
    // An empty result still names its columns; DDL prints nothing.
    let empty = succeeds(&run(
        &[
            "--format",
            "csv",
            "-c",
            "CREATE TABLE t (x INT); SELECT x FROM t",
        ],
        None,
    ));
    assert_eq!(empty, "x\n");
}

#[test]
fn a_failing_statement_stops_the_run_with_one_line_and_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_url(dir.path());
    let output = run(
        &[
            "-c",
            &format!("SELECT 1 AS before; CALL finalize_vector_index(index => '{index}'); SELECT 2 AS after"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        stdout.contains("before") && !stdout.contains("after"),
        "{stdout}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("dvi: ") && stderr.contains("index.json"),
        "{stderr}"
    );
    // The library's message, without the engine's prefixes.
    assert!(
        !stderr.contains("External error") && !stderr.contains("Internal error"),
        "{stderr}"
    );

    // The same from a pipe, and a parse error.
    let output = run(&[], Some("SELECT 1;\nSELEC oops;\nSELECT 3 AS never;"));
    assert_eq!(output.status.code(), Some(1));
    assert!(!text(&output.stdout).contains("never"));
    assert!(text(&output.stderr).starts_with("dvi: "));

    // Bad arguments: status 2 and the usage; a missing file: status 1, naming it.
    let output = run(&["--format", "xml"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("usage: dvi"));
    let output = run(&["-f", "/nonexistent/build.sql"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read /nonexistent/build.sql"));
}

/// A finalize with nothing to do is its own outcome: the script goes on, the row
/// says so, and the run exits with status 3 (scripts tell it from success and
/// from failure); a run with work done exits 0.
#[test]
fn nothing_to_finalize_exits_with_status_3() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_url(dir.path());
    let finalize = format!("CALL finalize_vector_index(index => '{index}')");
    succeeds(&run(
        &["-c", &format!("{}; {finalize}", setup(&index))],
        None,
    ));
    let output = run(
        &[
            "--format",
            "csv",
            "-c",
            &format!("{finalize}; SELECT 2 AS after"),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        stdout.contains(",0,0,0,0,1,\n") && stdout.contains("after"),
        "{stdout}"
    );
    assert!(
        stderr.starts_with("dvi: nothing to finalize: no complete shards are staged"),
        "{stderr}"
    );
}

#[test]
fn progress_goes_to_stderr_only_when_asked_or_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let index = index_url(dir.path());
    let finalize = format!("CALL finalize_vector_index(index => '{index}')");
    // Not a terminal: nothing but the results.
    let quiet = run(&["-c", &setup(&index)], None);
    succeeds(&quiet);
    assert_eq!(text(&quiet.stderr), "");
    // Asked for: the final counts of each statement, totals reached.
    let output = run(&["--progress", "always", "-c", &finalize], None);
    succeeds(&output);
    let stderr = text(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("progress: merging ")
            && last.contains("merged 8/8 rows")
            && last.contains("commit 1/1"),
        "{stderr}"
    );
    let units = last
        .trim_start_matches("progress: merging ")
        .split(' ')
        .next()
        .unwrap();
    let (done, total) = units.split_once('/').unwrap();
    assert_eq!(done, total, "{stderr}");
}

#[test]
fn the_prompt_edits_lines_keeps_history_and_runs_multi_line_statements() {
    use nix::pty::openpty;

    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let pty = openpty(None, None).unwrap();
    let mut child = Command::new(DVI)
        .env("DVI_HISTORY", &history)
        .env("TERM", "xterm")
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    let mut terminal = std::fs::File::from(pty.master);
    let mut reader = terminal.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let mut wait_for = |needle: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while screen.matches(needle).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(bytes) => screen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("no '{needle}' ×{count} on the terminal:\n{screen}"),
            }
        }
    };
    wait_for("dvi> ", 1);
    // A statement over two lines: the second prompt is the continuation one.
    terminal.write_all(b"SELECT 40 +\r").unwrap();
    wait_for("  -> ", 1);
    terminal.write_all(b"2 AS answer;\r").unwrap();
    wait_for("| 42     |", 1);
    // Up arrow recalls it from the history, Enter runs it again.
    wait_for("dvi> ", 2);
    terminal.write_all(b"\x1b[A\r").unwrap();
    wait_for("| 42     |", 2);
    // An error is printed and the prompt goes on.
    wait_for("dvi> ", 3);
    terminal.write_all(b"SELECT nope;\r").unwrap();
    wait_for("dvi: ", 1);
    wait_for("dvi> ", 4);
    terminal.write_all(b"\\q\r").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dvi did not leave on \\q");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(
        saved.contains("SELECT 40 +\n2 AS answer;") || saved.contains("SELECT 40 +\\n2 AS answer;"),
        "{saved}"
    );
}

#[test]
fn readme_three_worker_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/three_workers.sh");
    let output = Command::new("sh")
        .arg(script)
        .arg(dir.path())
        .env("DVI", DVI)
        .output()
        .unwrap();
    let stdout = succeeds(&output);
    // Three complete shards of 10,000 rows and two fragments each.
    assert_eq!(
        stdout
            .matches("| 10000 | 2             | complete |")
            .count(),
        3,
        "{stdout}"
    );
    // Finalize (CSV): one segment of every row, from the three shards.
    let finalize = stdout
        .lines()
        .skip_while(|l| !l.starts_with("segment_id,"))
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(finalize.len(), 2, "{stdout}");
    let header: Vec<&str> = finalize[0].split(',').collect();
    let row: Vec<&str> = finalize[1].split(',').collect();
    let field = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(field("rows"), "30000");
    assert_eq!(field("num_fragments"), "6");
    // Search: three hits.
    let hits = stdout
        .lines()
        .skip_while(|l| !l.contains("| fragment |"))
        .count();
    assert_eq!(hits, 3 + 3, "{stdout}");
    // Each worker staged its shard.
    for w in 0..3 {
        let out = std::fs::read_to_string(dir.path().join(format!("worker-{w}.out"))).unwrap();
        assert!(out.contains("10000"), "{out}");
    }
}
