# syntax=docker/dockerfile:1
# vigil-model-server: Open Inference Protocol v2 over gRPC with ONNX Runtime, loaded at run
# time (ort `load-dynamic`) from the pinned PyPI wheel's shared library. Build from the
# repository root:
#   docker build -f docker/model-server.Dockerfile -t ghcr.io/vigil-dev/vigil-model-server:0.1.0 .
ARG ORT_VERSION=1.31.1

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vigil-model-server --bin vigil-model-server \
 && install -D target/release/vigil-model-server /out/vigil-model-server

# The ONNX Runtime shared library from the same wheel scripts/setup-onnxruntime.sh installs.
FROM docker.io/library/python:3.12-slim-bookworm AS ort
ARG ORT_VERSION
RUN pip download --quiet --no-deps --only-binary=:all: --dest /wheel "onnxruntime==${ORT_VERSION}" \
 && python -m zipfile -e /wheel/onnxruntime-*.whl /ort \
 && install -D "/ort/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" "/out/libonnxruntime.so.${ORT_VERSION}"

FROM gcr.io/distroless/cc-debian12:nonroot
ARG ORT_VERSION
COPY --from=ort /out/ /opt/onnxruntime/lib/
COPY --from=build /out/vigil-model-server /usr/local/bin/vigil-model-server
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}
USER 65532:65532
EXPOSE 8001 8002
ENTRYPOINT ["/usr/local/bin/vigil-model-server"]
CMD ["--repository", "/models", "--grpc-addr", "0.0.0.0:8001", "--metrics-addr", "0.0.0.0:8002", "--disable-repository-api"]
