//! Facts as templates see them: `[facts]` < the machine's `facts` < facts
//! gathered from the machine (cached in `.lab/facts/NAME.json`).

use indexmap::IndexMap;
use lab_config::{Machine, Project};
use lab_render::Scope;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::secret::SecretFacts;

/// Where the gathered facts of `machine` are cached.
pub fn gathered_path(lab_dir: &Path, machine: &str) -> PathBuf {
    lab_facts::cache_path(lab_dir, machine)
}

/// The cached gathered facts of a machine; empty when never gathered. A
/// file that is not a JSON object is an error naming it.
pub fn load_gathered(lab_dir: &Path, machine: &str) -> Result<IndexMap<String, Value>, String> {
    lab_facts::load(lab_dir, machine).map_err(|e| e.to_string())
}

/// Merge the levels of facts for `m`: `[facts]`, the secret facts for
/// every machine, the machine's `facts`, its secret facts, the gathered.
pub fn merged_facts(
    project: &Project,
    m: &Machine,
    secret: &SecretFacts,
    gathered: &IndexMap<String, Value>,
) -> IndexMap<String, Value> {
    let mut facts = project.facts.clone();
    let empty = IndexMap::new();
    let own_secret = secret.machines.get(&m.name).unwrap_or(&empty);
    for (k, v) in secret
        .global
        .iter()
        .chain(m.facts.iter())
        .chain(own_secret.iter())
        .chain(gathered.iter())
    {
        facts.insert(k.clone(), v.clone());
    }
    facts
}

/// The scopes of every machine of the project (every machine, because each
/// scope carries every machine's public view).
pub fn scopes(
    project: &Project,
    secret: &SecretFacts,
    gathered: &IndexMap<String, IndexMap<String, Value>>,
) -> IndexMap<String, Arc<Scope>> {
    let empty = IndexMap::new();
    let facts: Vec<IndexMap<String, Value>> = project
        .machines
        .iter()
        .map(|m| merged_facts(project, m, secret, gathered.get(&m.name).unwrap_or(&empty)))
        .collect();
    let views: Arc<IndexMap<String, Value>> = Arc::new(
        project
            .machines
            .iter()
            .zip(&facts)
            .map(|(m, f)| {
                (
                    m.name.clone(),
                    json!({
                        "name": m.name,
                        "host": m.host,
                        "user": m.user,
                        "port": m.port,
                        "layers": m.layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
                        "facts": f,
                    }),
                )
            })
            .collect(),
    );
    project
        .machines
        .iter()
        .zip(facts)
        .map(|(m, f)| {
            (
                m.name.clone(),
                Arc::new(Scope {
                    machine: m.name.clone(),
                    facts: f,
                    machines: views.clone(),
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scope shares one inventory: a copy each made a build of one
    /// machine of 200 hold 200 inventories (150 MB).
    #[test]
    fn scopes_share_one_inventory() {
        let text = (0..3)
            .map(|i| format!("[machines.m{i}]\nhost = \"10.0.0.{i}\"\nfacts = {{ n = {i} }}\n"))
            .collect::<String>();
        let p = Project::parse(Path::new("/p"), Path::new("/p/lab.toml"), text).unwrap();
        let s = scopes(&p, &SecretFacts::default(), &IndexMap::new());
        assert_eq!(s.len(), 3);
        assert_eq!(s["m1"].machines.len(), 3);
        assert_eq!(s["m1"].machines["m2"]["facts"]["n"], 2);
        assert_eq!(s["m2"].facts["n"], 2);
        assert!(Arc::ptr_eq(&s["m0"].machines, &s["m2"].machines));
    }
}
