//! Registration: `PREFIX/instances/NAME`, bound to a lease kept alive every [`TICK`], holds
//! the generation this instance serves and its in-flight counts, rewritten when they change.
//! An instance that stops (or loses etcd) for longer than [`TTL_SECONDS`] drops out.

use std::sync::Arc;
use std::time::Duration;

use bascule_admin::{ClusterInstance, SlotCounts};
use etcd_client::{Client, PutOptions};

use crate::control::cluster::{timed, Link, StoreError};
use crate::control::Control;
use crate::SlotName;

/// How often the lease is kept alive and the counts are looked at.
const TICK: Duration = Duration::from_millis(500);
/// Lease time to live.
const TTL_SECONDS: i64 = 3;

/// What this instance reports now.
fn report(control: &Control, name: &str) -> ClusterInstance {
    let r = control.load();
    ClusterInstance {
        name: name.to_string(),
        generation: r.generation,
        inflight: SlotCounts {
            blue: r.counters.inflight(SlotName::Blue),
            green: r.counters.inflight(SlotName::Green),
        },
    }
}

/// Keeps this instance registered, for ever; a failure starts over with a new lease.
pub(super) async fn register(control: Arc<Control>, link: Arc<Link>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Err(e) = registered(&control, &link, &mut tick).await {
            tracing::debug!(error = %e, "cluster registration lost; registering again");
        }
        tick.tick().await;
    }
}

/// One lease's life: grant, then keep alive and rewrite on change until something fails.
async fn registered(
    control: &Control,
    link: &Link,
    tick: &mut tokio::time::Interval,
) -> Result<(), StoreError> {
    let mut client = link.client().await?;
    let grant = timed(client.lease_grant(TTL_SECONDS, None)).await?;
    let lease = grant.id();
    let (mut keeper, mut answers) = timed(client.lease_keep_alive(lease)).await?;
    let key = format!("{}{}", link.instances_key(), link.config.name);
    let mut sent: Option<ClusterInstance> = None;
    loop {
        let now = report(control, &link.config.name);
        if sent.as_ref() != Some(&now) {
            put(&mut client, &key, &now, lease).await?;
            sent = Some(now);
        }
        tick.tick().await;
        timed(keeper.keep_alive()).await?;
        match timed(answers.message()).await? {
            Some(a) if a.ttl() > 0 => {}
            _ => return Err(StoreError::LeaseExpired),
        }
    }
}

async fn put(
    client: &mut Client,
    key: &str,
    value: &ClusterInstance,
    lease: i64,
) -> Result<(), StoreError> {
    let json = serde_json::to_vec(value).expect("report serialises");
    let options = PutOptions::new().with_lease(lease);
    timed(client.put(key, json, Some(options)))
        .await
        .map(|_| ())
}
