//! Leader election with a `coordination.k8s.io/v1` Lease (kube-lease-manager: server-side
//! apply of the Lease, renewal before expiry, release on drop). Only the holder runs the
//! controllers, so two operator replicas never write the same children at once.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease is valid without renewal, in seconds.
    pub duration_s: u64,
    /// How long before expiry the holder renews, in seconds.
    pub grace_s: u64,
}

/// A running campaign: the lock state and the task renewing it.
pub struct Campaign {
    /// `true` while this replica holds the Lease.
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Failure to start a campaign.
#[derive(Debug, thiserror::Error)]
#[error("failed to set up the leader Lease {namespace}/{name}")]
pub struct LeaseError {
    namespace: String,
    name: String,
    #[source]
    source: LeaseManagerError,
}

/// Starts campaigning for the Lease (creating it if needed).
///
/// # Errors
/// [`LeaseError`] if the Lease cannot be read or created.
pub async fn campaign(client: Client, config: &LeaseConfig) -> Result<Campaign, LeaseError> {
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_s)
        .with_grace(config.grace_s)
        .build()
        .await
        .map_err(|source| LeaseError {
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            source,
        })?;
    let (is_leader, task) = manager.watch().await;
    Ok(Campaign { is_leader, task })
}

impl Campaign {
    /// Resolves once this replica holds the Lease.
    pub async fn acquired(&mut self) {
        // An error means the renewal task ended; `lost()` reports that.
        let _ = self.is_leader.wait_for(|held| *held).await;
    }

    /// A future that resolves when this replica stops holding the Lease.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.is_leader.clone();
        async move {
            let _ = rx.wait_for(|held| !*held).await;
        }
    }

    /// Releases the Lease (so a standby takes over at once) and waits up to `timeout` for
    /// the renewal task to finish.
    pub async fn release(self, timeout: Duration) {
        let Campaign { is_leader, task } = self;
        // Dropping the last receiver makes the task release the Lease and return.
        drop(is_leader);
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(Ok(_))) => tracing::info!("Released the leader Lease."),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "Failed to release the leader Lease."),
            Ok(Err(e)) => tracing::warn!(error = %e, "Lease task failed."),
            Err(_) => tracing::warn!("Timed out releasing the leader Lease."),
        }
    }
}
