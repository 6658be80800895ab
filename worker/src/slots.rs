//! The job slots of one job type in this process: at most `per_type` of
//! its jobs run at once, and at most `per_tenant` of them for one tenant, so
//! one tenant's jobs never hold every slot. The queue hands this process
//! more deliveries than it runs; a delivery waits for its tenant's slot
//! first and then for a run slot (both in arrival order), its record still
//! `queued`, so a tenant at its share waits while the others' jobs run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Tenants remembered before the idle ones are forgotten.
const TENANTS_KEPT: usize = 1024;

#[derive(Debug)]
pub(crate) struct Slots {
    run: Arc<Semaphore>,
    per_tenant: usize,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A run slot and its tenant's slot, given back on drop.
#[derive(Debug)]
pub(crate) struct Held {
    _run: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

impl Slots {
    pub(crate) fn new(per_type: usize, per_tenant: usize) -> Self {
        Self {
            run: Arc::new(Semaphore::new(per_type.max(1))),
            per_tenant: per_tenant.clamp(1, per_type.max(1)),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for `tenant`'s slot, then for a run slot.
    pub(crate) async fn acquire(&self, tenant: &str) -> Held {
        let gate = self.gate(tenant);
        // Neither semaphore is ever closed: acquiring cannot fail.
        let tenant_permit = match gate.acquire_owned().await {
            Ok(permit) => permit,
            Err(closed) => unreachable!("a tenant's slots are never closed (invariant): {closed}"),
        };
        let run_permit = match Arc::clone(&self.run).acquire_owned().await {
            Ok(permit) => permit,
            Err(closed) => unreachable!("run slots are never closed (invariant): {closed}"),
        };
        Held {
            _run: run_permit,
            _tenant: tenant_permit,
        }
    }

    fn gate(&self, tenant: &str) -> Arc<Semaphore> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if tenants.len() >= TENANTS_KEPT && !tenants.contains_key(tenant) {
            // Idle: nobody holds or waits for it.
            tenants.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        Arc::clone(
            tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_tenant_never_holds_every_slot() {
        let slots = Arc::new(Slots::new(3, 2));
        let a1 = slots.acquire("a").await;
        let a2 = slots.acquire("a").await;
        // A third job of tenant a waits for a's slot, not for a run slot.
        let third = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.acquire("a").await })
        };
        tokio::task::yield_now().await;
        let b = tokio::time::timeout(Duration::from_secs(1), slots.acquire("b"))
            .await
            .expect("tenant b gets the slot a cannot take");
        assert!(!third.is_finished());
        drop(a1);
        let a3 = tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("a's third job runs once a slot of a's is free")
            .unwrap();
        drop((a2, a3, b));
    }

    #[tokio::test]
    async fn idle_tenants_are_forgotten_so_the_map_stays_bounded() {
        let slots = Slots::new(4, 2);
        let busy = slots.acquire("busy").await;
        for i in 0..3 * TENANTS_KEPT {
            drop(slots.acquire(&format!("t{i}")).await);
        }
        let tenants = slots.tenants.lock().unwrap();
        assert!(
            tenants.len() <= TENANTS_KEPT + 1,
            "{} tenants kept",
            tenants.len()
        );
        assert!(
            tenants.contains_key("busy"),
            "a tenant holding a slot is kept"
        );
        drop(tenants);
        drop(busy);
    }
}
