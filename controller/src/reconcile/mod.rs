//! The reconcilers: loops that read the desired state from the store and what the nodes
//! report, and converge the two. Each pass takes no hint of what changed: it reads everything
//! again, and a pass that fails leaves the retry to the next one. Passes run every second and
//! whenever a request wakes them; only the leading controller runs them.
//!
//! Order within a pass: the nodes are polled, networks and security groups made on them,
//! images imported, nodes entering maintenance emptied, pending VMs placed, each VM's node
//! told what to do, and EIPs put on the nodes their VMs run on. The liveness loop (`ha`) runs
//! beside them on a shorter period. Calls to nodes that may take long (an ensure, a remove)
//! run as tasks of their own, at most one per VM at a time, so that one slow node holds up
//! nothing else.

mod eips;
mod ha;
mod images;
mod maintenance;
mod networks;
mod nodes;
mod place;
mod vms;

use std::sync::Arc;
use std::time::Duration;

use crate::Ctl;

/// How often the reconcilers run without being woken.
const PERIOD: Duration = Duration::from_secs(1);

/// Runs the reconcilers for ever (while this controller leads).
pub async fn run(ctl: Arc<Ctl>) {
    tokio::spawn(ha::run(ctl.clone()));
    let mut polled = nodes::Poller::default();
    loop {
        if ctl.is_leader() {
            if let Err(e) = pass(&ctl, &mut polled).await {
                tracing::warn!("a reconcile pass stopped: {e}");
            }
        }
        tokio::select! {
            () = ctl.wake.notified() => {}
            () = tokio::time::sleep(PERIOD) => {}
        }
    }
}

async fn pass(ctl: &Arc<Ctl>, polled: &mut nodes::Poller) -> Result<(), crate::model::DbError> {
    polled.poll(ctl).await?;
    networks::networks(ctl).await?;
    networks::groups(ctl).await?;
    images::import(ctl).await?;
    maintenance::empty(ctl).await?;
    place::pending(ctl).await?;
    vms::converge(ctl).await?;
    eips::converge(ctl).await?;
    Ok(())
}

/// Runs a blocking client call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, triad_api::http::ClientError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(triad_api::error::chain(&e)),
        Err(e) => Err(format!("the call's task failed: {e}")),
    }
}
