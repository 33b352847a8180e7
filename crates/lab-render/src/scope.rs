use indexmap::IndexMap;
use lab_graph::{Digest, Hasher, Key};
use serde_json::Value;

/// What one machine's templates can see: its merged facts, its name, and
/// every machine's public view (for peers, DNS, VPN configs).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub machine: String,
    /// Facts after precedence (global < machine < gathered).
    pub facts: IndexMap<String, Value>,
    /// Every machine, in inventory order: name -> `{name, host, user, port,
    /// layers, facts}`. Shared by every machine's scope (one copy per
    /// build, not one per machine: 200 machines would hold 200 of them).
    pub machines: std::sync::Arc<IndexMap<String, Value>>,
}

/// The digest of a fact's value (`None` = not defined).
pub fn fact_digest(v: Option<&Value>) -> Digest {
    match v {
        None => Digest::ABSENT,
        Some(v) => Hasher::new("lab-fact-v1")
            .str(&serde_json::to_string(v).expect("json"))
            .finish(),
    }
}

impl Scope {
    /// The current digest of an input a render may have read: a fact, the
    /// machine list, or one machine's view. `None` for other keys.
    pub fn digest_of(&self, key: &Key) -> Option<Digest> {
        match key {
            Key::Fact(k) => Some(fact_digest(self.facts.get(k))),
            Key::Peer(m) => Some(fact_digest(self.machines.get(m))),
            Key::Peers => {
                let mut h = Hasher::new("lab-peers-v1");
                for name in self.machines.keys() {
                    h.str(name);
                }
                Some(h.finish())
            }
            _ => None,
        }
    }
}
