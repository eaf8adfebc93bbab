//! Which controller runs the reconcilers: the one whose lease holds `/triad/leader`. With the
//! embedded store there is one controller and it leads. With etcd each controller tries to
//! put the key with a lease of its own; the one that does keeps the lease alive and leads
//! until it cannot, then stops leading before its lease can have run out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::keys;
use crate::store::{Expect, Txn};
use crate::Ctl;

/// The lease's time to live: a dead leader's successor takes over within it.
const TTL: Duration = Duration::from_secs(3);
/// How often the leader renews, and others look.
const EVERY: Duration = Duration::from_millis(500);

/// Campaigns for ever as `me`.
pub async fn campaign(ctl: Arc<Ctl>, me: String) {
    loop {
        match lead_once(&ctl, &me).await {
            Ok(()) => {}
            Err(e) => tracing::warn!("leader election: {e}"),
        }
        if ctl.is_leader() {
            tracing::warn!("{me} no longer leads");
        }
        ctl.set_leader(false);
        tokio::time::sleep(EVERY).await;
    }
}

/// Takes the lead if it is free and holds it while the lease can be renewed.
async fn lead_once(ctl: &Ctl, me: &str) -> Result<(), crate::store::StoreError> {
    let store = &ctl.db.store;
    let lease = store.grant(TTL).await?;
    let txn = Txn::new()
        .expect(keys::LEADER, Expect::Absent)
        .put_with_lease(keys::LEADER, me.as_bytes().to_vec(), lease);
    if store.txn(txn).await?.is_none() {
        store.revoke(lease).await?;
        return Ok(());
    }
    tracing::info!("{me} leads the reconcilers");
    ctl.set_leader(true);
    ctl.wake.notify_one();
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(EVERY).await;
        match tokio::time::timeout(EVERY, store.keep_alive(lease)).await {
            Ok(Ok(())) => renewed = Instant::now(),
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
        // Stop leading well before the lease can have lapsed unseen.
        if renewed.elapsed() > TTL / 2 {
            return Ok(());
        }
    }
}
