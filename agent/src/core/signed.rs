//! Key rotation in the core: a signed `TrustUpdate` is checked against the keys trusted now
//! ([`crate::trust::Trust::update`], pure) and, when good, saved and applied. Desired-state
//! signatures are checked where documents arrive (`on_payload`, `on_restored`).

use skiff_proto::{EventBody, TrustUpdate};

use super::{Action, Core};
use crate::trust::InUse;

impl Core {
    pub(super) fn on_trust_update(&mut self, update: &TrustUpdate, out: &mut Vec<Action>) {
        let in_use: Vec<InUse> = [("cluster", &self.cluster_doc), ("node", &self.node_doc)]
            .into_iter()
            .filter_map(|(scope, doc)| {
                let doc = doc.as_ref()?;
                Some(InUse {
                    what: format!("{scope} document version {}", doc.version),
                    key_id: doc.signature.as_ref()?.key_id.clone(),
                })
            })
            .collect();
        match self
            .trust
            .update(update, &self.cfg.cluster, &self.cfg.node, &in_use)
        {
            Ok(state) => {
                self.trust.set_state(state.clone());
                out.push(Action::SaveTrust(state));
                out.push(Action::Event(EventBody::TrustUpdated {
                    version: update.version,
                    keys: self.trust.key_ids(),
                }));
            }
            Err(reason) => out.push(Action::Event(EventBody::TrustRejected {
                version: update.version,
                reason,
            })),
        }
    }

    /// Ids of the keys trusted now (empty: desired state is not verified).
    pub fn trusted_keys(&self) -> Vec<skiff_proto::Name> {
        self.trust.key_ids()
    }
}
