# An image holding `dvi` and `dvi-cluster` (the scheduler and executor processes
# of a cluster): deploy/README.md. Build from the repository's root:
#   docker build -t datafusion-vector-index .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cargo.lock is committed: the image builds what CI tested.
RUN cargo build --release --locked -p datafusion-vector-index --bin dvi \
 && cargo build --release --locked -p datafusion-vector-index-ballista --bin dvi-cluster

FROM debian:bookworm-slim
# CA certificates for https object stores; curl for the containers' health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --uid 10001 dvi
COPY --from=build /src/target/release/dvi /src/target/release/dvi-cluster /usr/local/bin/
USER dvi
WORKDIR /home/dvi
# 50050: scheduler (gRPC and HTTP); 50051, 50052: an executor's Flight and gRPC ports.
EXPOSE 50050 50051 50052
ENTRYPOINT ["dvi-cluster"]
CMD ["--help"]
