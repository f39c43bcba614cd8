//! Pure validation of a StreamPipeline with what its dereference step found: checks the spec,
//! (with the detector's own `PipelineConfig` validation plus what only the operator checks),
//! fills in `bootstrapServers`, clamps the replicas to the partitions of the source topics,
//! and sorts the rules that select it into accepted (rendered into `rules.yaml`) and rejected
//! (reported as `Degraded`). Errors name the field (`spec.windows[1].slide`) and the problem.

use std::collections::BTreeMap;
use std::sync::Arc;

use vigil_api::conditions;
use vigil_api::v1alpha1::{AnomalyModel, DetectionRule, SecurityProtocol, StreamPipeline};

use super::dereference::{Dereferenced, Partitions};
use crate::controller::FieldError;
use crate::controller::detection_rule::validate::validate_rules_for_pipeline;
use crate::labels::{MAX_PIPELINE_NAME, check_dns_label};

/// librdkafka consumer properties the operator sets itself and `spec.source.kafka.properties`
/// may not override.
pub const RESERVED_PROPERTIES: [&str; 4] = [
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
];

/// How the detector count relates to the source partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaLimit {
    /// `spec.parallelism` fits within the partitions.
    Within {
        /// Partitions of all source topics together.
        partitions: i32,
    },
    /// `spec.parallelism` exceeds the partitions: extra consumers would sit idle.
    Clamped {
        /// `spec.parallelism`.
        requested: i32,
        /// Partitions of all source topics together (the replicas run).
        partitions: i32,
    },
    /// Partitions could not be read; `spec.parallelism` is used as is.
    Unknown {
        /// Why, naming the broker or topic.
        reason: String,
    },
}

/// A rule that selects the pipeline but is left out of its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedRule {
    /// DetectionRule name.
    pub name: String,
    /// Why.
    pub error: FieldError,
}

/// A model an accepted rule uses that does not serve yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadyModel {
    /// AnomalyModel name.
    pub name: String,
    /// Its `Ready` condition's reason and message, or that it has none yet.
    pub why: String,
}

/// A pipeline that can be built: everything the build and status steps need.
#[derive(Clone, Debug)]
pub struct ValidatedPipeline {
    /// The pipeline as the API server has it.
    pub pipeline: Arc<StreamPipeline>,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `bootstrap.servers` the detectors use.
    pub bootstrap_servers: String,
    /// Detector replicas to run.
    pub replicas: i32,
    /// Why `replicas` is what it is.
    pub limit: ReplicaLimit,
    /// Rules rendered into `rules.yaml`, sorted by name.
    pub rules: Vec<Arc<DetectionRule>>,
    /// Rules selecting the pipeline that were left out, sorted by name.
    pub rejected_rules: Vec<RejectedRule>,
    /// Models used by the accepted rules, sorted by name.
    pub models: Vec<Arc<AnomalyModel>>,
    /// Models among `models` that are not `Ready`.
    pub unready_models: Vec<UnreadyModel>,
}

/// Validates a pipeline against what was dereferenced.
///
/// # Errors
/// A [`FieldError`] for a spec the operator cannot run; the caller reports it in the status
/// and waits for the spec to change.
pub fn validate(
    pipeline: &Arc<StreamPipeline>,
    deref: &Dereferenced,
    default_bootstrap_servers: Option<&str>,
) -> Result<ValidatedPipeline, FieldError> {
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let namespace = pipeline.metadata.namespace.clone().unwrap_or_default();
    let spec = &pipeline.spec;
    check_dns_label(&name, MAX_PIPELINE_NAME).map_err(|m| FieldError::new("metadata.name", m))?;

    let kafka = &spec.source.kafka;
    let bootstrap_servers = kafka
        .bootstrap_servers
        .as_deref()
        .or(default_bootstrap_servers)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            FieldError::new(
                "spec.source.kafka.bootstrapServers",
                "not set, and the operator has no --kafka-bootstrap-servers default",
            )
        })?
        .to_string();
    for key in kafka.properties.keys() {
        if RESERVED_PROPERTIES.contains(&key.as_str()) {
            return Err(FieldError::new(
                format!("spec.source.kafka.properties.{key}"),
                "is set by the operator and may not be overridden",
            ));
        }
    }
    if let Some(security) = &kafka.security {
        let sasl = matches!(
            security.protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        if sasl && security.credentials_secret.is_none() {
            return Err(FieldError::new(
                "spec.source.kafka.security.credentialsSecret",
                "required when the protocol uses SASL",
            ));
        }
        if sasl && security.sasl_mechanism.is_none() {
            return Err(FieldError::new(
                "spec.source.kafka.security.saslMechanism",
                "required when the protocol uses SASL",
            ));
        }
        if !security.protocol.uses_tls() {
            for (field, set) in [
                ("caSecret", security.ca_secret.is_some()),
                ("clientCertSecret", security.client_cert_secret.is_some()),
            ] {
                if set {
                    return Err(FieldError::new(
                        format!("spec.source.kafka.security.{field}"),
                        format!(
                            "only applies to protocol SSL or SASL_SSL, not {}",
                            security.protocol.librdkafka_name().to_uppercase()
                        ),
                    ));
                }
            }
        }
    }
    if let Some(c) = &spec.checkpointing {
        let file = c.location.starts_with("file://");
        if file && c.volume_claim.is_none() {
            return Err(FieldError::new(
                "spec.checkpointing.volumeClaim",
                "required with a file:// location in Kubernetes: a ReadWriteMany PersistentVolumeClaim every detector mounts (a pod's own file system is lost with the pod)",
            ));
        }
        if !file && c.volume_claim.is_some() {
            return Err(FieldError::new(
                "spec.checkpointing.volumeClaim",
                "only applies to a file:// location",
            ));
        }
        if file && c.credentials_secret.is_some() {
            return Err(FieldError::new(
                "spec.checkpointing.credentialsSecret",
                "only applies to an s3:// location",
            ));
        }
    }
    // The detector's own validation of the spec (paths, windows, features) and of the rules
    // that select it, compiled together as the detectors will.
    let verdicts = validate_rules_for_pipeline(pipeline, &deref.rules, &deref.models)?;

    let requested = spec.parallelism.max(1);
    let (replicas, limit) = match &deref.partitions {
        Partitions::Known(per_topic) => {
            let partitions: i32 = per_topic.values().sum();
            if requested > partitions {
                (
                    partitions.max(1),
                    ReplicaLimit::Clamped {
                        requested,
                        partitions,
                    },
                )
            } else {
                (requested, ReplicaLimit::Within { partitions })
            }
        }
        Partitions::Unknown(reason) => (
            requested,
            ReplicaLimit::Unknown {
                reason: reason.clone(),
            },
        ),
    };

    let mut rules = Vec::new();
    let mut rejected_rules = Vec::new();
    for rule in &deref.rules {
        let rule_name = rule.metadata.name.clone().unwrap_or_default();
        match verdicts.get(&rule_name).cloned().unwrap_or(Ok(())) {
            Ok(()) => rules.push(rule.clone()),
            Err(error) => rejected_rules.push(RejectedRule {
                name: rule_name,
                error,
            }),
        }
    }
    rules.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    rejected_rules.sort_by(|a, b| a.name.cmp(&b.name));

    let mut models: BTreeMap<String, Arc<AnomalyModel>> = BTreeMap::new();
    for rule in &rules {
        if let Some(m) = rule
            .spec
            .model
            .as_ref()
            .and_then(|r| deref.models.get(&r.model_ref))
        {
            models.insert(m.metadata.name.clone().unwrap_or_default(), m.clone());
        }
    }
    let unready_models = models
        .iter()
        .filter_map(|(name, model)| {
            let ready = model
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::READY));
            match ready {
                Some(c) if c.status == "True" => None,
                Some(c) => Some(UnreadyModel {
                    name: name.clone(),
                    why: format!("{}: {}", c.reason, c.message),
                }),
                None => Some(UnreadyModel {
                    name: name.clone(),
                    why: "it has no Ready condition yet".into(),
                }),
            }
        })
        .collect();

    Ok(ValidatedPipeline {
        pipeline: pipeline.clone(),
        name,
        namespace,
        bootstrap_servers,
        replicas,
        limit,
        rules,
        rejected_rules,
        models: models.into_values().collect(),
        unready_models,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_fixtures::{nab_fixture, parse_pipeline};

    fn deref_with(partitions: Partitions) -> (Arc<StreamPipeline>, Dereferenced) {
        let (pipeline, mut deref) = nab_fixture();
        deref.partitions = partitions;
        (pipeline, deref)
    }

    #[test]
    fn replicas_are_clamped_to_partitions() {
        let (p, d) = deref_with(Partitions::Known(BTreeMap::from([("nab".into(), 2)])));
        let v = validate(&p, &d, None).unwrap();
        assert_eq!(p.spec.parallelism, 4);
        assert_eq!(v.replicas, 2);
        assert_eq!(
            v.limit,
            ReplicaLimit::Clamped {
                requested: 4,
                partitions: 2
            }
        );

        let (p, d) = deref_with(Partitions::Known(BTreeMap::from([
            ("nab".into(), 3),
            ("b".into(), 3),
        ])));
        let v = validate(&p, &d, None).unwrap();
        assert_eq!(
            (v.replicas, v.limit),
            (4, ReplicaLimit::Within { partitions: 6 })
        );

        let (p, d) = deref_with(Partitions::Unknown("broker down".into()));
        assert_eq!(validate(&p, &d, None).unwrap().replicas, 4);
    }

    #[test]
    fn bootstrap_servers_come_from_spec_or_default() {
        let (p, d) = nab_fixture();
        assert_eq!(
            validate(&p, &d, Some("other:9092"))
                .unwrap()
                .bootstrap_servers,
            "127.0.0.1:9092"
        );
        let mut p2 = (*p).clone();
        p2.spec.source.kafka.bootstrap_servers = None;
        let p2 = Arc::new(p2);
        assert_eq!(
            validate(&p2, &d, Some("k:9092")).unwrap().bootstrap_servers,
            "k:9092"
        );
        let e = validate(&p2, &d, None).unwrap_err();
        assert_eq!(e.field, "spec.source.kafka.bootstrapServers");
    }

    #[test]
    fn spec_errors_name_the_field() {
        let (_, d) = nab_fixture();
        let p = parse_pipeline(|s| {
            s.replace(
                "consumerGroup: nab",
                "consumerGroup: nab, properties: {group.id: x}",
            )
        });
        assert_eq!(
            validate(&p, &d, None).unwrap_err().field,
            "spec.source.kafka.properties.group.id"
        );
        let p = parse_pipeline(|s| s.replace("size: 30s, slide: 15s", "size: 30s, slide: 60s"));
        let e = validate(&p, &d, None).unwrap_err();
        assert_eq!(e.field, "spec.windows[0].slide");
        assert!(e.message.contains("60000 ms for size 30000 ms"), "{e}");
        let p = parse_pipeline(|s| s.replace("name: nab\n", "name: 9nab\n"));
        assert_eq!(validate(&p, &d, None).unwrap_err().field, "metadata.name");
    }

    #[test]
    fn tls_secrets_need_a_tls_protocol() {
        let (_, d) = nab_fixture();
        let with = |security: &str| {
            let security = security.to_string();
            parse_pipeline(move |s| {
                s.replace(
                    "consumerGroup: nab",
                    &format!("consumerGroup: nab, security: {security}"),
                )
            })
        };
        for (security, field) in [
            (
                "{protocol: PLAINTEXT, caSecret: ca}",
                "spec.source.kafka.security.caSecret",
            ),
            (
                "{protocol: SASL_PLAINTEXT, saslMechanism: PLAIN, credentialsSecret: c, clientCertSecret: t}",
                "spec.source.kafka.security.clientCertSecret",
            ),
        ] {
            let e = validate(&with(security), &d, None).unwrap_err();
            assert_eq!(e.field, field, "{security}");
            assert!(
                e.message
                    .contains("only applies to protocol SSL or SASL_SSL"),
                "{e}"
            );
        }
        for ok in [
            "{protocol: SSL, caSecret: ca, clientCertSecret: t}",
            "{protocol: SASL_SSL, saslMechanism: SCRAM-SHA-512, credentialsSecret: c, caSecret: ca, clientCertSecret: t}",
        ] {
            validate(&with(ok), &d, None).unwrap();
        }
    }

    #[test]
    fn checkpoint_storage_is_checked_for_kubernetes() {
        let (_, d) = nab_fixture();
        let with = |c: &str| {
            parse_pipeline(move |s| {
                s.replace(
                    "  parallelism: 4\n",
                    &format!("  parallelism: 4\n  checkpointing: {c}\n  upgradeMode: LastState\n"),
                )
            })
        };
        let ok = [
            "{location: 'file:///state', volumeClaim: vigil-state}",
            "{location: 's3://bucket/vigil', credentialsSecret: s3-creds}",
            "{location: 's3://bucket/vigil'}",
        ];
        for c in ok {
            validate(&with(c), &d, None).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        for (c, field) in [
            (
                "{location: 'file:///state'}",
                "spec.checkpointing.volumeClaim",
            ),
            (
                "{location: 's3://b/p', volumeClaim: x}",
                "spec.checkpointing.volumeClaim",
            ),
            (
                "{location: 'file:///s', volumeClaim: x, credentialsSecret: y}",
                "spec.checkpointing.credentialsSecret",
            ),
            (
                "{location: 'gs://b', credentialsSecret: y}",
                "spec.checkpointing.location",
            ),
            (
                "{location: 's3://b', interval: 10ms}",
                "spec.checkpointing.interval",
            ),
        ] {
            assert_eq!(
                validate(&with(c), &d, None).unwrap_err().field,
                field,
                "{c}"
            );
        }
        let p = parse_pipeline(|s| {
            s.replace(
                "  parallelism: 4\n",
                "  parallelism: 4\n  upgradeMode: Savepoint\n",
            )
        });
        let e = validate(&p, &d, None).unwrap_err();
        assert_eq!(e.field, "spec.upgradeMode");
        assert!(e.message.contains("needs spec.checkpointing"), "{e}");
    }

    #[test]
    fn rules_are_split_and_models_collected() {
        let (p, d) = nab_fixture();
        let v = validate(&p, &d, None).unwrap();
        let accepted: Vec<_> = v
            .rules
            .iter()
            .map(|r| r.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(accepted, ["iforest-score", "spike"]);
        assert_eq!(v.rejected_rules.len(), 1);
        assert_eq!(v.rejected_rules[0].name, "wrong-window");
        assert_eq!(v.rejected_rules[0].error.field, "spec.window");
        assert_eq!(v.models.len(), 1);
        assert_eq!(v.unready_models[0].name, "iforest");
        assert!(v.unready_models[0].why.contains("no Ready condition"));
    }

    #[test]
    fn nab_example_rules_are_all_accepted() {
        let mut m = vigil_api::manifest::Manifests::default();
        m.add_str(
            "nab-machine-temperature.yaml",
            include_str!("../../../../manifests/examples/nab-machine-temperature.yaml"),
        )
        .unwrap();
        let mut pipeline = m.pipelines[0].clone();
        pipeline.metadata.namespace = Some("nab".into());
        let rules = m
            .rules
            .into_iter()
            .map(|mut r| {
                r.metadata.namespace = Some("nab".into());
                Arc::new(r)
            })
            .collect::<Vec<_>>();
        let deref = Dereferenced {
            rules: crate::controller::stream_pipeline::dereference::selecting_rules(
                &pipeline,
                rules.clone(),
            ),
            models: BTreeMap::new(),
            partitions: Partitions::Known(BTreeMap::from([("nab.machine-temperature".into(), 1)])),
        };
        assert_eq!(deref.rules.len(), rules.len());
        let v = validate(&Arc::new(pipeline), &deref, Some("127.0.0.1:9092")).unwrap();
        assert_eq!(v.rejected_rules, []);
        assert_eq!(v.rules.len(), rules.len());
    }
}
