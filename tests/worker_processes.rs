//! Workers as separate processes: `dvi` processes that share nothing but an S3
//! bucket (on the server `tests/common/s3.rs` starts) each stage a shard of their
//! own fragments; a coordinator process finalizes and searches. One worker is
//! killed (SIGKILL) after writing its data and before its manifest.
#![cfg(feature = "s3")]

#[path = "common/s3.rs"]
mod s3_server;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every process builds the same table: 8,000 rows in 8 fragments.
const TABLE: &str = "CREATE TABLE items AS SELECT \
    CAST(value AS BIGINT UNSIGNED) + (CAST(value % 8 AS BIGINT UNSIGNED) << 32) AS row_id, \
    make_array(sin(value), cos(value * 0.7), value / 8000.0, (value % 13) / 13.0) AS vec \
    FROM generate_series(0, 7999)";

fn dvi(sql: &str) -> Command {
    let server = s3_server::server();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dvi"));
    command
        .envs(server.env())
        .args(["-c", &format!("{TABLE}; {sql}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn succeeds(mut command: Command) -> String {
    let output = command.output().unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}\n{stdout}");
    stdout
}

fn worker(index: &str, fragments: &str) -> Command {
    dvi(&format!(
        "CALL build_vector_index_shard(index => '{index}', table => 'items', column => 'vec', \
         where => 'row_id >> 32 IN ({fragments})')"
    ))
}

#[test]
fn worker_processes_stage_into_one_bucket_and_a_coordinator_finalizes() {
    let server = s3_server::server();
    let bucket = server.bucket();
    let index = format!("s3://{bucket}/items");
    succeeds(dvi(&format!(
        "CALL create_vector_index(index => '{index}', table => 'items', column => 'vec', \
         type => 'IVF_SQ', num_partitions => 8)"
    )));

    // Three workers at once, fragments 0–5.
    let workers: Vec<_> = ["0, 1", "2, 3", "4, 5"]
        .iter()
        .map(|f| worker(&index, f).spawn().unwrap())
        .collect();
    for w in workers {
        let output = w.wait_with_output().unwrap();
        assert!(output.status.success(), "{:?}", text(&output));
    }

    // A fourth, killed between its data and its manifest.
    server.hold_manifests(&bucket);
    let mut killed = worker(&index, "6, 7").spawn().unwrap();
    let started = Instant::now();
    while !server.manifest_waiting(&bucket) {
        assert!(
            killed.try_wait().unwrap().is_none(),
            "the worker ended before writing its manifest"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no manifest write"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    server.fail_held_manifests(&bucket);

    let shards = succeeds(dvi(&format!(
        "SELECT status, count(*) AS shards, sum(rows) AS rows FROM vector_index_shards('{index}') \
         GROUP BY status ORDER BY status"
    )));
    assert!(
        shards.contains("| complete   | 3      | 6000 |")
            && shards.contains("| incomplete | 1      |"),
        "{shards}"
    );

    let listed = succeeds(dvi(&format!(
        "SELECT shard_id FROM vector_index_shards('{index}') WHERE status = 'incomplete'"
    )));
    let incomplete = listed
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split_whitespace().next())
        .find(|id| id.len() == 36)
        .unwrap_or_else(|| panic!("no incomplete shard id in {listed}"))
        .to_string();

    // The default refuses, naming the incomplete shard.
    let output = dvi(&format!("CALL finalize_vector_index(index => '{index}')"))
        .output()
        .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("dvi: ")
            && stderr.trim_end().lines().count() == 1
            && stderr.contains(&format!(
                "incomplete shards (no shard.json) are staged: {incomplete}"
            ))
            && stderr.contains("skip_incomplete => true"),
        "{stderr}"
    );

    // Skipping it commits the other three.
    succeeds(dvi(&format!(
        "CALL finalize_vector_index(index => '{index}', skip_incomplete => true)"
    )));
    let committed = succeeds(dvi(&format!(
        "SELECT sum(rows) AS rows, count(DISTINCT version) AS versions FROM vector_index_segments('{index}')"
    )));
    assert!(committed.contains("| 6000 | 1        |"), "{committed}");
    let found = succeeds(dvi(&format!(
        "SELECT row_id FROM vector_search('{index}', [sin(9.0), cos(6.3), 9.0 / 8000.0, 9.0 / 13.0], 1, 8)"
    )));
    assert!(
        found.contains("| 4294967305 |"),
        "row 9 (fragment 1) finds itself: {found}"
    );

    // The default vacuum keeps them for now, and says why.
    let kept = succeeds(dvi(&format!(
        "CALL vacuum_vector_index(index => '{index}')"
    )));
    assert!(
        kept.contains(&incomplete)
            && kept.contains("| kept ")
            && kept.contains("younger than 3600 s: its writer may still be running"),
        "{kept}"
    );

    // Vacuum removes the killed worker's leftovers.
    let vacuumed = succeeds(dvi(&format!(
        "CALL vacuum_vector_index(index => '{index}', older_than_seconds => 0)"
    )));
    assert!(
        vacuumed.contains("incomplete_shard") && vacuumed.contains("| removed "),
        "{vacuumed}"
    );
    let left = succeeds(dvi(&format!(
        "SELECT count(*) AS staged FROM vector_index_shards('{index}')"
    )));
    assert!(left.contains("| 0      |"), "{left}");
}

#[test]
fn dvi_reports_a_failing_statement_in_one_line_and_exits_1() {
    let output = Command::new(env!("CARGO_BIN_EXE_dvi"))
        .args([
            "-c",
            "SELECT 1; CALL finalize_vector_index(index => 's3:///no-bucket')",
        ])
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout.contains("Int64(1)"), "{stdout}");
    assert!(
        stderr.starts_with("dvi: ")
            && stderr.contains("no bucket in the URL")
            && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_dvi"))
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// README's "From a shell" flow as an operator types it, one fresh `dvi` process per
/// step, with the table itself on S3: a `COPY … TO 's3://…'`, then workers that
/// declare it with `CREATE EXTERNAL TABLE … LOCATION 's3://…'` and stage their
/// fragments from it, a coordinator that finalizes and searches joined to it.
#[test]
fn a_table_on_s3_works_in_fresh_processes() {
    let server = s3_server::server();
    let bucket = server.bucket();
    let items = format!("s3://{bucket}/readme/items/");
    let index = format!("s3://{bucket}/readme/idx");
    let fresh = |sql: String| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dvi"));
        command
            .envs(server.env())
            .args(["-c", &sql])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let external = format!("CREATE EXTERNAL TABLE items STORED AS PARQUET LOCATION '{items}'");
    succeeds(fresh(format!(
        "COPY (SELECT \
           CAST(value AS BIGINT UNSIGNED) + (CAST(value % 4 AS BIGINT UNSIGNED) << 32) AS row_id, \
           make_array(sin(value), cos(value * 0.7), value / 2000.0, (value % 13) / 13.0) AS vec \
         FROM generate_series(0, 1999)) TO '{items}' STORED AS PARQUET"
    )));
    let counted = succeeds(fresh(format!(
        "{external}; SELECT count(*) AS n FROM items"
    )));
    assert!(counted.contains("| 2000 |"), "{counted}");
    succeeds(fresh(format!(
        "{external}; CALL create_vector_index(index => '{index}', table => 'items', column => 'vec', \
         type => 'IVF_PQ', num_partitions => 4, num_sub_vectors => 2)"
    )));
    let workers: Vec<_> = ["< 2", ">= 2"]
        .iter()
        .map(|range| {
            fresh(format!(
                "{external}; CALL build_vector_index_shard(index => '{index}', table => 'items', \
                 column => 'vec', where => 'row_id >> 32 {range}')"
            ))
            .spawn()
            .unwrap()
        })
        .collect();
    for w in workers {
        let output = w.wait_with_output().unwrap();
        assert!(output.status.success(), "{:?}", text(&output));
    }
    let found = succeeds(fresh(format!(
        "{external}; CALL finalize_vector_index(index => '{index}', expect_fragments => '0-3'); \
         SELECT t.row_id FROM vector_search('{index}', [sin(9.0), cos(6.3), 9.0 / 2000.0, 9.0 / 13.0], 1, nprobes => 4) s \
         JOIN items t ON t.row_id = s.row_id"
    )));
    assert!(
        found.contains("| 4294967305 |"),
        "row 9 finds itself: {found}"
    );
}

/// A store that stops answering: a listener on loopback that accepts connections
/// and never replies. With `--timeout 2` a statement fails within a few seconds
/// (not object_store's three minutes), in one line that says how long it waited
/// and how to give it more time.
#[test]
fn a_store_that_stops_answering_fails_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            // Bounded: the test ends long before this many connections.
            for stream in listener.incoming().take(64).flatten() {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_dvi"))
        .args([
            "--endpoint-url",
            &endpoint,
            "--allow-http",
            "--timeout",
            "2",
            "-c",
            "SELECT * FROM vector_index_segments('s3://paused/idx')",
        ])
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let waited = started.elapsed();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        waited < Duration::from_secs(30),
        "waited {waited:?}: {stderr}"
    );
    assert!(
        stderr.starts_with("dvi: ")
            && stderr.trim_end().lines().count() == 1
            && stderr.contains("gave up after")
            && stderr.contains("may take 2 s")
            && stderr.contains("dvi --timeout"),
        "{stderr}"
    );
    assert!(!held.lock().unwrap().is_empty(), "the store was asked");
}
