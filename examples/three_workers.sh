#!/bin/sh
# A 3-worker index build driven only by `dvi`, from a shell (README, "A 3-worker
# build from a shell"). tests/cli.rs runs this very script.
#
#   examples/three_workers.sh [WORK_DIR]
#
# DVI names the tool (default: `dvi` on the PATH). On a cluster each worker runs on
# its own machine and the index is an s3:// URL; here they are three processes.
set -eu
dvi=${DVI:-dvi}
work=${1:-$(mktemp -d)}
index="file://$work/index"
items="CREATE EXTERNAL TABLE items STORED AS PARQUET LOCATION '$work/items/'"

echo "== data: 30,000 vectors × 8 in 6 fragments (row_id >> 32), as Parquet"
$dvi -c "COPY (
    SELECT (CAST(value / 5000 AS BIGINT UNSIGNED) << 32) + CAST(value % 5000 AS BIGINT UNSIGNED) AS row_id,
           make_array(sin(value * 0.001), cos(value * 0.001), sin(value * 0.013), cos(value * 0.017),
                      sin(value * 0.1), cos(value * 0.3), (value % 97) / 97.0, (value % 13) / 13.0) AS vec
    FROM generate_series(0, 29999)
  ) TO '$work/items/' STORED AS PARQUET"

echo "== coordinator: train the shared model"
$dvi -c "$items; CALL create_vector_index(index => '$index', table => 'items', column => 'vec',
                                         type => 'IVF_SQ', num_partitions => 32)"

echo "== three workers at once, two fragments each"
pids=""
for w in 0 1 2; do
  $dvi -c "$items; CALL build_vector_index_shard(index => '$index', table => 'items', column => 'vec',
              row_id => 'row_id', where => 'row_id >> 32 BETWEEN $((2 * w)) AND $((2 * w + 1))')" \
    > "$work/worker-$w.out" &
  pids="$pids $!"
done
for pid in $pids; do
  wait "$pid"
done

echo "== coordinator: the staged shards, finalize, search"
$dvi -c "SELECT rows, num_fragments, status FROM vector_index_shards('$index') ORDER BY rows"
$dvi -c "CALL finalize_vector_index(index => '$index')" --format csv
$dvi -c "SELECT row_id >> 32 AS fragment, row_id & 4294967295 AS row, distance
         FROM vector_search('$index', [0.54, 0.84, 0.99, 0.13, 0.0, 0.0, 0.5, 0.5], 3, nprobes => 8)"
