//! The etcd backend, for several controllers sharing one cluster's state. A thin mapping:
//! etcd already has these semantics.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, TxnOp,
    WatchOptions,
};

use super::{
    check_txn, prefix_end, ttl_secs, Batch, EventKind, Expect, Kv, LeaseId, Op, Range, Revision,
    Store, StoreError, Txn, Watch, WatchEvent,
};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> Result<Kv, StoreError> {
    Ok(Kv {
        key: kv
            .key_str()
            .map_err(|_| StoreError::Invalid("a key in etcd is not UTF-8".into()))?
            .to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

/// etcd answers a put with a missing lease with an error, not a failed compare.
fn lease_error(e: etcd_client::Error, lease: Option<LeaseId>) -> StoreError {
    match (lease, &e) {
        (Some(lease), etcd_client::Error::GRpcStatus(status))
            if status.message().contains("lease not found") =>
        {
            StoreError::LeaseNotFound(lease)
        }
        _ => StoreError::Etcd(e),
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Self {
            client,
            endpoints: endpoints.to_vec(),
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let resp = self.client.kv_client().get(key, None).await?;
        resp.kvs().first().map(to_kv).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let options = GetOptions::new().with_range(prefix_end(prefix));
        let resp = self.client.kv_client().get(prefix, Some(options)).await?;
        Ok(Range {
            kvs: resp.kvs().iter().map(to_kv).collect::<Result<_, _>>()?,
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
        })
    }

    async fn txn(&self, txn: Txn) -> Result<Option<Revision>, StoreError> {
        check_txn(&txn)?;
        let compares: Vec<Compare> = txn
            .when
            .iter()
            .map(|(key, expect)| match expect {
                Expect::Absent => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Expect::ModRevision(r) => Compare::mod_revision(key.as_str(), CompareOp::Equal, *r),
            })
            .collect();
        let mut lease_used = None;
        let ops: Vec<TxnOp> = txn
            .then
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let options = lease.map(|l| {
                        lease_used = Some(l);
                        PutOptions::new().with_lease(l)
                    });
                    TxnOp::put(key.as_str(), value.clone(), options)
                }
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let request = etcd_client::Txn::new().when(compares).and_then(ops);
        let resp = self
            .client
            .kv_client()
            .txn(request)
            .await
            .map_err(|e| lease_error(e, lease_used))?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        let mut options = WatchOptions::new().with_range(prefix_end(prefix));
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await?;
        let (tx, watch) = Watch::channel();
        tokio::spawn(async move {
            loop {
                let message = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        let _ = tx.send(Err(StoreError::Closed)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::Etcd(e))).await;
                        return;
                    }
                };
                if message.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted(message.compact_revision())))
                        .await;
                    return;
                }
                if message.canceled() {
                    let _ = tx.send(Err(StoreError::Closed)).await;
                    return;
                }
                // One message may hold several revisions' events, in order.
                let mut batches: Vec<Batch> = Vec::new();
                for event in message.events() {
                    let Some(kv) = event.kv() else { continue };
                    let kv = match to_kv(kv) {
                        Ok(kv) => kv,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let kind = match event.event_type() {
                        EventType::Put => EventKind::Put,
                        EventType::Delete => EventKind::Delete,
                    };
                    let event = WatchEvent { kind, kv };
                    match batches.last_mut() {
                        Some(b) if b.revision == event.kv.mod_revision => b.events.push(event),
                        _ => batches.push(Batch {
                            revision: event.kv.mod_revision,
                            events: vec![event],
                        }),
                    }
                }
                for batch in batches {
                    if tx.send(Ok(batch)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(watch)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let resp = self
            .client
            .lease_client()
            .grant(ttl_secs(ttl), None)
            .await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // Opening the keep-alive stream sends one keep-alive and reads its answer.
        match self.client.lease_client().keep_alive(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(StoreError::Etcd(e)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(StoreError::Etcd(e)),
        }
    }
}
