//! The caps on long-polls waiting at once: one for the server, and a share of it for each
//! tenant, so that one tenant holding its whole share leaves the rest to the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The long-polls waiting now, in all and per tenant (anonymous callers share one count).
#[derive(Debug)]
pub(crate) struct LongPolls {
    total: Arc<Semaphore>,
    per_tenant: usize,
    waiting: Mutex<HashMap<Option<String>, usize>>,
}

/// Why a long-poll may not wait.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server's cap is reached.
    Server,
    /// The caller's tenant holds its whole share.
    Tenant,
}

impl Refusal {
    /// What the `503` says.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Server => "too many long-polls are waiting on this server",
            Self::Tenant => "too many long-polls of this tenant are waiting on this server",
        }
    }
}

/// A long-poll's right to wait; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct Permit {
    polls: Arc<LongPolls>,
    tenant: Option<String>,
    _total: OwnedSemaphorePermit,
}

impl LongPolls {
    /// At most `total` long-polls in all and `per_tenant` of any one tenant.
    pub(crate) fn new(total: usize, per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            per_tenant,
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a long-poll of `tenant`, unless a cap is reached.
    pub(crate) fn try_acquire(self: &Arc<Self>, tenant: Option<&str>) -> Result<Permit, Refusal> {
        let tenant = tenant.map(str::to_owned);
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.get(&tenant).copied().unwrap_or(0) >= self.per_tenant {
            return Err(Refusal::Tenant);
        }
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Server)?;
        *waiting.entry(tenant.clone()).or_default() += 1;
        Ok(Permit {
            polls: self.clone(),
            tenant,
            _total: total,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut waiting = self
            .polls
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = waiting.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                // Tenants that wait no more take no memory.
                waiting.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_past_its_share_leaves_the_others_their_slots() {
        let polls = LongPolls::new(5, 2);
        let a1 = polls.try_acquire(Some("a")).unwrap();
        let _a2 = polls.try_acquire(Some("a")).unwrap();
        assert_eq!(polls.try_acquire(Some("a")).unwrap_err(), Refusal::Tenant);
        let _b = polls.try_acquire(Some("b")).unwrap();
        let _anonymous = polls.try_acquire(None).unwrap();
        let _c = polls.try_acquire(Some("c")).unwrap();
        assert_eq!(polls.try_acquire(Some("d")).unwrap_err(), Refusal::Server);
        drop(a1);
        let _a3 = polls.try_acquire(Some("a")).unwrap();
        drop(_a3);
        drop(_a2);
        assert!(
            !polls
                .waiting
                .lock()
                .unwrap()
                .contains_key(&Some("a".to_owned())),
            "a tenant with no waiting poll is forgotten"
        );
    }
}
