//! Pieces shared by the workloads the operator builds: child object metadata with an owner
//! reference, and the Pod Security Standards "restricted" security contexts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// User and group id the workloads run as (distroless `nonroot`).
pub const NONROOT_ID: i64 = 65532;

/// Metadata of a child: name, namespace, labels and the owner as controller.
pub fn child_meta(
    name: String,
    namespace: &str,
    labels: BTreeMap<String, String>,
    owner: OwnerReference,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    }
}

/// Pod-level security context meeting the "restricted" Pod Security Standard.
pub fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT_ID),
        run_as_group: Some(NONROOT_ID),
        fs_group: Some(NONROOT_ID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Container-level security context meeting the "restricted" Pod Security Standard, with a
/// read-only root filesystem.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// CPU and memory requests, and a memory limit.
pub fn resources(
    cpu_request: &str,
    memory_request: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu_request.into())),
            ("memory".to_string(), Quantity(memory_request.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// One ingress rule of a NetworkPolicy: TCP `port` from `from` (`None`: from anywhere).
pub struct Ingress {
    /// Container port.
    pub port: i32,
    /// Pods (by labels, in the policy's namespace) allowed; `None` allows every source.
    pub from_pods: Option<std::collections::BTreeMap<String, String>>,
}

/// A NetworkPolicy that lets into the pods of `selector` only the listed TCP ports (egress is
/// not restricted: Kafka and artifact hosts are deployment-specific).
pub fn ingress_policy(
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    selector: std::collections::BTreeMap<String, String>,
    rules: Vec<Ingress>,
) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    use k8s_openapi::api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(
                rules
                    .into_iter()
                    .map(|r| NetworkPolicyIngressRule {
                        ports: Some(vec![NetworkPolicyPort {
                            port: Some(IntOrString::Int(r.port)),
                            protocol: Some("TCP".into()),
                            ..NetworkPolicyPort::default()
                        }]),
                        from: r.from_pods.map(|labels| {
                            vec![NetworkPolicyPeer {
                                pod_selector: Some(LabelSelector {
                                    match_labels: Some(labels),
                                    ..LabelSelector::default()
                                }),
                                ..NetworkPolicyPeer::default()
                            }]
                        }),
                    })
                    .collect(),
            ),
            ..NetworkPolicySpec::default()
        }),
    }
}
