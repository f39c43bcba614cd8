# Everyday recipes. The README's two commands are scripts/demo.sh and scripts/test.sh.
.PHONY: demo test quick fmt lint generate crds kafka-up kafka-down cluster-up cluster-down bench

demo:            ## NAB machine-temperature scenario end to end on the embedded broker
	scripts/demo.sh
test:            ## everything CI runs (starts Kafka, ONNX Runtime, a control plane)
	scripts/test.sh
quick:           ## static checks and unit tests only
	scripts/test.sh --quick
fmt:
	cargo fmt --all
lint:
	cargo clippy --workspace --all-targets -- -D warnings
generate crds:   ## regenerate crds/ and the chart's copy
	cargo run -q -p vigil-api --bin crdgen -- crds
	[ ! -d charts/vigil/crds ] || cp crds/*.yaml charts/vigil/crds/
kafka-up:
	scripts/kafka.sh start
kafka-down:
	scripts/kafka.sh stop
cluster-up:
	e2e/cluster.sh up
cluster-down:
	e2e/cluster.sh down
bench:           ## data-path benchmark (real broker when KAFKA_BOOTSTRAP is set)
	cargo run --release -p vigil -- bench
