"""faiss on the search bench's data: IVF_FLAT, IVF_PQ and IVF_SQ search at nprobe 20.

The comparison for `cargo bench --bench search` (BENCHMARKS.md, "Search"). The bench
runs this script itself, alternating with its own rounds, when `SEARCH_BENCH_FAISS`
names a Python that has faiss:

    python3 -m venv /tmp/faiss-venv
    /tmp/faiss-venv/bin/pip install faiss-cpu==1.15.1 numpy==2.4.6
    SEARCH_BENCH_FAISS=/tmp/faiss-venv/bin/python cargo bench --bench search

or alone, on the data the bench writes:

    SEARCH_BENCH_EXPORT=/tmp/search-data cargo bench --bench search
    /tmp/faiss-venv/bin/python benches/faiss_search.py /tmp/search-data

Same vectors and queries, same model shape (256 partitions trained by k-means on
65,536 sampled rows, 25 iterations; PQ with 16 sub-vectors of 8 bits; SQ with 8 bits
per dimension), same k and nprobe. Indexes are in memory. For each type: queries/s
of one batch of all queries on every core, of one batch on one thread, and of one
query per `search` call, and recall@10 of the first 100 queries against exact search.

With `--serve`, the indexes are built once, "ready" is printed, and each line read
from standard input names a type to measure once more (one `summary` line each).
"""

import argparse
import sys
import time

import faiss
import numpy as np

DIM = 128
PARTITIONS = 256
TRAIN_ROWS = 65_536
K = 10
NPROBE = 20
TYPES = ["IVF_FLAT", "IVF_PQ", "IVF_SQ"]


def build(name, base, sample):
    quantizer = faiss.IndexFlatL2(DIM)
    if name == "IVF_FLAT":
        index = faiss.IndexIVFFlat(quantizer, DIM, PARTITIONS)
    elif name == "IVF_PQ":
        index = faiss.IndexIVFPQ(quantizer, DIM, PARTITIONS, 16, 8)
    else:
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, DIM, PARTITIONS, faiss.ScalarQuantizer.QT_8bit)
    index.cp.niter = 25
    index.train(sample)
    index.add(base)
    index.nprobe = NPROBE
    index.search(base[:1], K)  # first touch
    # faiss keeps a reference to the quantizer, not ownership: keep it alive.
    return index, quantizer


def measure(name, index, queries, truth):
    threads = faiss.omp_get_max_threads()
    t = time.perf_counter()
    _, found = index.search(queries, K)
    batch = len(queries) / (time.perf_counter() - t)
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    index.search(queries, K)
    one_thread = len(queries) / (time.perf_counter() - t)
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    for i in range(len(queries)):
        index.search(queries[i:i + 1], K)
    per_call = len(queries) / (time.perf_counter() - t)
    # Over the first 100 queries, as the Rust bench.
    first = min(100, len(queries))
    hits = sum(len(set(found[i]) & set(truth[i])) for i in range(first))
    recall = hits / (first * K)
    print(f"summary faiss {name} batch_qps={batch:.0f} batch_1thread_qps={one_thread:.0f} "
          f"call_qps={per_call:.0f} recall_at_10={recall:.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default="/tmp/search-data")
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    base = np.fromfile(f"{args.data_dir}/base.f32", dtype="<f4").reshape(-1, DIM)
    queries = np.fromfile(f"{args.data_dir}/queries.f32", dtype="<f4").reshape(-1, DIM)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
          f"SIMD {faiss.get_compile_options()}; {base.shape[0]} vectors, "
          f"{queries.shape[0]} queries", flush=True)
    exact = faiss.IndexFlatL2(DIM)
    exact.add(base)
    _, truth = exact.search(queries, K)
    del exact
    sample = base[np.random.default_rng(42).choice(base.shape[0], TRAIN_ROWS, replace=False)]
    indexes = {name: build(name, base, sample) for name in args.types.split(",")}
    if not args.serve:
        for name, (index, _) in indexes.items():
            measure(name, index, queries, truth)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name in indexes:
            measure(name, indexes[name][0], queries, truth)
        else:
            print(f"error: no index {name!r}", flush=True)


if __name__ == "__main__":
    main()
