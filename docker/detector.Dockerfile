# syntax=docker/dockerfile:1
# vigil: the detector (`vigil run`), started by the operator's StatefulSets with
# `command: [vigil]`. Build from the repository root:
#   docker build -f docker/detector.Dockerfile -t ghcr.io/vigil-dev/vigil:0.1.0 .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# zlib (librdkafka's compression) is linked statically: the runtime image has no libz. OpenSSL
# (librdkafka's TLS, rdkafka feature `ssl-vendored`) is built from source and linked statically.
ENV LIBZ_SYS_STATIC=1
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vigil --bin vigil \
 && install -D target/release/vigil /out/vigil

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vigil /usr/local/bin/vigil
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/vigil"]
CMD ["--help"]
