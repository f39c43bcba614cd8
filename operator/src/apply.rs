//! Server-side apply of children and status, with one field manager (`vigil-operator`) and
//! `force` (the operator owns what it writes; a human's `kubectl edit` of a managed field is
//! reverted at the next reconcile).
//!
//! There is no orphan sweep: every child has a fixed name derived from its owner and a
//! controller owner reference, so the set of children of an object never shrinks, and
//! kube-controller-manager's garbage collector deletes them with their owner.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::labels::FIELD_MANAGER;

/// A failed write to the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Server-side apply of a child failed.
    #[error("failed to apply {kind} {namespace}/{name}")]
    Apply {
        /// Kind of the child.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Server-side apply of a status failed.
    #[error("failed to patch the status of {kind} {namespace}/{name}")]
    PatchStatus {
        /// Kind of the object.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies one namespaced object and returns it as the API server stored it (with status).
///
/// # Errors
/// [`ApplyError::Apply`] with the API server's error.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.patch(&name, &params(), &Patch::Apply(obj))
        .await
        .map_err(|source| ApplyError::Apply {
            kind: K::kind(&()).into_owned(),
            namespace,
            name,
            source,
        })
}

/// Applies the status of `obj` (its status subresource) as `status`.
///
/// # Errors
/// [`ApplyError::PatchStatus`] with the API server's error.
pub async fn apply_status<K, S>(client: &Client, obj: &K, status: &S) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize,
{
    patch_status(client, obj, status, None).await
}

/// Applies the status of `obj` only if the object is still at `obj`'s resourceVersion (the
/// API server's optimistic concurrency: a server-side apply naming a resourceVersion is
/// refused with 409 Conflict when the stored object is newer). For state transitions that
/// must not be taken twice from a stale cache; see [`is_conflict`].
///
/// # Errors
/// [`ApplyError::PatchStatus`] with the API server's error.
pub async fn apply_status_if_unchanged<K, S>(
    client: &Client,
    obj: &K,
    status: &S,
) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize,
{
    patch_status(client, obj, status, obj.resource_version()).await
}

/// Whether a failed write was refused because the object changed since it was read.
#[must_use]
pub fn is_conflict(e: &ApplyError) -> bool {
    let (ApplyError::Apply { source, .. } | ApplyError::PatchStatus { source, .. }) = e;
    matches!(source, kube::Error::Api(s) if s.code == 409)
}

async fn patch_status<K, S>(
    client: &Client,
    obj: &K,
    status: &S,
    resource_version: Option<String>,
) -> Result<(), ApplyError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
    S: Serialize,
{
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let mut body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    api.patch_status(&name, &params(), &Patch::Apply(body))
        .await
        .map(|_| ())
        .map_err(|source| ApplyError::PatchStatus {
            kind: K::kind(&()).into_owned(),
            namespace,
            name,
            source,
        })
}
