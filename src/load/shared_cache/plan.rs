//! What one attach may do with the shared host cache, decided by the serving process and sent
//! with the attach: per weight file, read it from cached blocks, read it from disk into blocks
//! reserved for it, or read it without caching. Travels appended to the attach's handoff.

use serde::{Deserialize, Serialize};
use wc_actors::Handoff;

use crate::load::files::FileKey;
use crate::load::LoadError;

/// One attach's use of the shared host cache.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePlan {
    /// The attach's ticket: the seal its fills write, and the key its end is reported under.
    pub ticket: u64,
    pub files: Vec<FilePlan>,
}

/// What to do with one weight file (the version `key` names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePlan {
    pub key: FileKey,
    pub action: CacheAction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheAction {
    /// Its data section is in these blocks, in order.
    Cached(Vec<usize>),
    /// Read it from disk into these blocks (reserved for this attach alone), then seal them.
    Fill(Vec<usize>),
    /// Read it from disk; the cache has no room for it.
    Uncached,
}

impl CachePlan {
    /// What to do with the file version `key`; a file the plan does not name is not cached.
    pub fn action(&self, key: &FileKey) -> &CacheAction {
        self.files
            .iter()
            .find(|f| &f.key == key)
            .map(|f| &f.action)
            .unwrap_or(&CacheAction::Uncached)
    }

    /// `handoff` with this plan appended.
    pub fn attach_to(&self, handoff: &Handoff) -> Handoff {
        let plan = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("a plan serialises");
        let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + handoff.0.len() + plan.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(handoff.0.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&handoff.0);
        bytes.extend_from_slice(&plan);
        Handoff(std::sync::Arc::new(bytes))
    }

    /// The handoff an attach was sent and the plan appended to it, if any.
    pub fn split(handoff: &Handoff) -> Result<(Handoff, Option<CachePlan>), LoadError> {
        let bytes = handoff.0.as_slice();
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Ok((handoff.clone(), None));
        };
        let invalid = |reason: String| LoadError::InvalidHandoff { reason };
        let (len, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| invalid("a cache plan without its length".into()))?;
        let len = usize::try_from(u64::from_le_bytes(*len))
            .ok()
            .filter(|&len| len <= rest.len())
            .ok_or_else(|| invalid("a cache plan's length is out of range".into()))?;
        let (inner, plan) = rest.split_at(len);
        let (plan, _): (CachePlan, usize) =
            bincode::serde::decode_from_slice(plan, bincode::config::standard())
                .map_err(|e| invalid(format!("a cache plan: {e}")))?;
        Ok((Handoff(std::sync::Arc::new(inner.to_vec())), Some(plan)))
    }
}

/// Marks a handoff with a plan appended (an inspection's handoff starts with a path's length,
/// never with these bytes).
const MAGIC: &[u8] = b"\0wc-cache-plan\0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_travels_with_its_handoff_and_a_plain_handoff_has_none() {
        let handoff = Handoff(std::sync::Arc::new(vec![3, 1, 4, 1, 5]));
        assert_eq!(CachePlan::split(&handoff).unwrap(), (handoff.clone(), None));
        let key = FileKey {
            path: "/m/model.safetensors".into(),
            device: 1,
            inode: 2,
            len: 3,
            modified: (4, 5),
            changed: (6, 7),
        };
        let plan = CachePlan {
            ticket: 9,
            files: vec![FilePlan {
                key: key.clone(),
                action: CacheAction::Fill(vec![2, 0]),
            }],
        };
        let (inner, back) = CachePlan::split(&plan.attach_to(&handoff)).unwrap();
        assert_eq!((inner, back.as_ref()), (handoff, Some(&plan)));
        assert_eq!(plan.action(&key), &CacheAction::Fill(vec![2, 0]));
        let other = FileKey { inode: 8, ..key };
        assert_eq!(plan.action(&other), &CacheAction::Uncached);
        let mut cut = plan.attach_to(&Handoff::default()).0.to_vec();
        cut.truncate(cut.len() - 1);
        assert!(CachePlan::split(&Handoff(std::sync::Arc::new(cut))).is_err());
    }
}
