//! End-to-end tests of vigil-operator against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok nodes) and a real Kafka broker, with the
//! chart installed. Run them with `e2e/tests/operator.sh`, which starts all of that; they are
//! `#[ignore]`d in a plain `cargo test`.

mod crds;
mod datapath;
mod examples;
mod fixtures;
mod harness;
mod kubelet;
mod leader;
mod models;
mod pipelines;
mod rollouts;
mod rules;
mod savepoints;
