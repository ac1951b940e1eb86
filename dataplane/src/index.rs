//! Which peer a receiver index belongs to.
//!
//! The protocol core draws a fresh random 32-bit index for every handshake
//! it starts or answers (WireGuard paper, 5.4.2: the index is "randomly
//! generated"), so the next one cannot be guessed from the last. It does not
//! say which peer an index went to, but every index leaves in the sender
//! field of a handshake message we send, so the device learns it there
//! ([`PeerIndex::learn`]) and looks it up for every message that names a
//! receiver (data, handshake responses, cookie replies).
//!
//! A peer keeps the indices of its last [`KEPT_PER_PEER`] handshakes: the
//! core keeps eight sessions per peer plus the handshake in flight, so an
//! older index can no longer open anything and is forgotten.

use crate::peer::Peer;
use crate::wire::{self, MessageType};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// Indices remembered per peer (eight sessions, one handshake, and slack
/// for initiations retried before an answer came).
pub(crate) const KEPT_PER_PEER: usize = 16;

/// The sender index of a handshake message we are about to send (the same
/// field a data message uses for its receiver).
pub(crate) fn sender_index(message: &[u8]) -> Option<u32> {
    match wire::message_type(message)? {
        MessageType::HandshakeInit | MessageType::HandshakeResponse => {
            wire::receiver_index(message)
        }
        _ => None,
    }
}

#[derive(Default)]
pub(crate) struct PeerIndex {
    map: RwLock<HashMap<u32, Arc<Peer>>>,
}

impl PeerIndex {
    /// Notes the index in `message` (if it is a handshake message) as
    /// `peer`'s, forgetting that peer's oldest index beyond the kept ones.
    pub(crate) fn learn(&self, peer: &Arc<Peer>, message: &[u8]) {
        let Some(index) = sender_index(message) else {
            return;
        };
        let evicted = {
            let mut kept = peer.indices.lock();
            if kept.contains(&index) {
                return;
            }
            kept.push_back(index);
            (kept.len() > KEPT_PER_PEER)
                .then(|| kept.pop_front())
                .flatten()
        };
        let mut map = self.map.write();
        if let Some(old) = evicted {
            if map.get(&old).is_some_and(|p| Arc::ptr_eq(p, peer)) {
                map.remove(&old);
            }
        }
        map.insert(index, peer.clone());
    }

    pub(crate) fn get(&self, index: u32) -> Option<Arc<Peer>> {
        self.map.read().get(&index).cloned()
    }

    /// Forgets every index of `peer` (it was removed or reset).
    pub(crate) fn forget(&self, peer: &Arc<Peer>) {
        let kept: Vec<u32> = peer.indices.lock().drain(..).collect();
        let mut map = self.map.write();
        for index in kept {
            if map.get(&index).is_some_and(|p| Arc::ptr_eq(p, peer)) {
                map.remove(&index);
            }
        }
    }

    pub(crate) fn clear(&self) {
        self.map.write().clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::PublicKey;

    /// A message of type `kind` and its length, carrying `index`.
    fn message(kind: u8, len: usize, index: u32) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[0] = kind;
        m[4..8].copy_from_slice(&index.to_le_bytes());
        m
    }

    fn init_with_index(index: u32) -> Vec<u8> {
        message(1, wire::HANDSHAKE_INIT_LEN, index)
    }

    #[test]
    fn handshake_messages_carry_the_index_and_data_does_not() {
        assert_eq!(
            sender_index(&init_with_index(0xdead_beef)),
            Some(0xdead_beef)
        );
        let resp = message(2, wire::HANDSHAKE_RESPONSE_LEN, 7);
        assert_eq!(sender_index(&resp), Some(7));
        let data = message(4, 64, 7);
        assert_eq!(sender_index(&data), None);
        assert_eq!(sender_index(&[1, 0, 0]), None, "too short");
        assert_eq!(sender_index(&[]), None);
    }

    #[test]
    fn a_peer_keeps_its_latest_indices_and_forgets_the_oldest() {
        let table = PeerIndex::default();
        let a = Arc::new(Peer::new(PublicKey([1; 32]), None));
        let b = Arc::new(Peer::new(PublicKey([2; 32]), None));
        for i in 0..(KEPT_PER_PEER as u32 + 3) {
            table.learn(&a, &init_with_index(100 + i));
        }
        table.learn(&b, &init_with_index(7));
        assert_eq!(table.len(), KEPT_PER_PEER + 1);
        assert!(table.get(100).is_none() && table.get(102).is_none());
        assert!(Arc::ptr_eq(&table.get(103).unwrap(), &a));
        assert!(Arc::ptr_eq(&table.get(7).unwrap(), &b));
        // An index the core handed out again (freed, then drawn for
        // another peer) now names the new owner, and the old owner's
        // eviction leaves it alone.
        table.learn(&b, &init_with_index(110));
        for i in 0..KEPT_PER_PEER as u32 {
            table.learn(&a, &init_with_index(1000 + i));
        }
        assert!(Arc::ptr_eq(&table.get(110).unwrap(), &b));
        table.forget(&a);
        assert_eq!(table.len(), 2);
        table.forget(&b);
        assert_eq!(table.len(), 0);
    }
}
