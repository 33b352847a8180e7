use crate::{Digest, Key};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// What a computed node read when it last ran, and what it produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// Every node read, with the digest it had at that moment, in the order
    /// they were read.
    pub deps: Vec<(Key, Digest)>,
    /// Digest of the node's result (rendered bytes, output entry).
    pub value: Digest,
}

/// Why a node has to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No trace: the node is new, or it failed last time, or state was lost.
    NeverBuilt,
    /// A dependency's digest differs from the recorded one. `now` is `None`
    /// when the dependency no longer exists.
    Changed {
        dep: Key,
        was: Digest,
        now: Option<Digest>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverBuilt => write!(f, "no previous build"),
            Reason::Changed { dep, now: None, .. } => write!(f, "{dep} is gone"),
            Reason::Changed {
                dep,
                was,
                now: Some(now),
            } if *was == Digest::ABSENT => write!(f, "{dep} appeared ({now:?})"),
            Reason::Changed {
                dep,
                now: Some(now),
                ..
            } if *now == Digest::ABSENT => write!(f, "{dep} was removed"),
            Reason::Changed {
                dep,
                was,
                now: Some(now),
            } => write!(f, "{dep} changed ({was:?} -> {now:?})"),
        }
    }
}

/// The answer of [`Graph::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Up to date; the recorded result digest still holds.
    Clean(Digest),
    Dirty(Reason),
}

#[derive(Clone, Debug)]
struct Node {
    key: Key,
    trace: Option<Trace>,
}

/// The build graph of one machine. Edges run from a dependency to the node
/// that read it, so a changed input finds what it affects by following
/// outgoing edges.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, ()>,
    index: HashMap<Key, NodeIndex>,
}

/// The persistent form of a [`Graph`]: the traces of its computed nodes.
/// Input nodes and edges are derived from them when loading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphState {
    pub nodes: Vec<(Key, Trace)>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn from_state(state: GraphState) -> Graph {
        let mut g = Graph::new();
        for (key, trace) in state.nodes {
            g.record(key, trace);
        }
        g
    }

    pub fn to_state(&self) -> GraphState {
        let mut nodes: Vec<(Key, Trace)> = self
            .g
            .node_weights()
            .filter_map(|n| n.trace.clone().map(|t| (n.key.clone(), t)))
            .collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        GraphState { nodes }
    }

    /// Number of computed nodes (nodes with a trace).
    pub fn len(&self) -> usize {
        self.g.node_weights().filter(|n| n.trace.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn trace(&self, key: &Key) -> Option<&Trace> {
        let ix = self.index.get(key)?;
        self.g[*ix].trace.as_ref()
    }

    /// Computed nodes with their traces, in key order (renders before
    /// outputs, which is dependency order).
    pub fn computed(&self) -> impl Iterator<Item = (&Key, &Trace)> {
        let mut v: Vec<_> = self
            .g
            .node_weights()
            .filter_map(|n| n.trace.as_ref().map(|t| (&n.key, t)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter()
    }

    fn node(&mut self, key: &Key) -> NodeIndex {
        if let Some(ix) = self.index.get(key) {
            return *ix;
        }
        let ix = self.g.add_node(Node {
            key: key.clone(),
            trace: None,
        });
        self.index.insert(key.clone(), ix);
        ix
    }

    /// Store the trace of a node that just ran, replacing its old edges.
    pub fn record(&mut self, key: Key, trace: Trace) {
        let ix = self.node(&key);
        self.drop_incoming(ix);
        for (dep, _) in &trace.deps {
            let d = self.node(dep);
            self.g.update_edge(d, ix, ());
        }
        self.g[ix].trace = Some(trace);
    }

    /// Forget a computed node (its output is gone). Its dependents keep
    /// their traces and will see it as gone.
    pub fn remove(&mut self, key: &Key) {
        let Some(&ix) = self.index.get(key) else {
            return;
        };
        self.drop_incoming(ix);
        self.g[ix].trace = None;
        self.collect_if_unused(ix);
    }

    fn drop_incoming(&mut self, ix: NodeIndex) {
        let deps: Vec<_> = self
            .g
            .edges_directed(ix, Direction::Incoming)
            .map(|e| (e.id(), e.source()))
            .collect();
        for (edge, dep) in deps {
            self.g.remove_edge(edge);
            self.collect_if_unused(dep);
        }
    }

    /// Drop a node that carries no trace and that nothing depends on.
    fn collect_if_unused(&mut self, ix: NodeIndex) {
        let unused = self.g[ix].trace.is_none()
            && self
                .g
                .neighbors_directed(ix, Direction::Outgoing)
                .next()
                .is_none();
        if unused {
            let node = self.g.remove_node(ix).expect("node exists");
            self.index.remove(&node.key);
        }
    }

    /// Is `key` up to date? `input` gives the current digest of an input
    /// node (`None` if it no longer exists); the current digest of a
    /// computed dependency is its recorded result, so callers check (and
    /// re-run) dependencies first.
    pub fn check(&self, key: &Key, input: &dyn Fn(&Key) -> Option<Digest>) -> Verdict {
        let Some(trace) = self.trace(key) else {
            return Verdict::Dirty(Reason::NeverBuilt);
        };
        for (dep, was) in &trace.deps {
            let now = if dep.is_input() {
                input(dep)
            } else {
                self.trace(dep).map(|t| t.value)
            };
            if now != Some(*was) {
                return Verdict::Dirty(Reason::Changed {
                    dep: dep.clone(),
                    was: *was,
                    now,
                });
            }
        }
        Verdict::Clean(trace.value)
    }

    /// The nodes that read `key` directly.
    pub fn dependents(&self, key: &Key) -> Vec<&Key> {
        let Some(&ix) = self.index.get(key) else {
            return Vec::new();
        };
        self.g
            .neighbors_directed(ix, Direction::Outgoing)
            .map(|n| &self.g[n].key)
            .collect()
    }

    /// Every computed node that transitively depends on one of `changed`,
    /// in dependency order (a [`BTreeSet`] of keys orders renders before
    /// outputs).
    pub fn affected<'a>(&self, changed: impl IntoIterator<Item = &'a Key>) -> BTreeSet<Key> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<NodeIndex> = changed
            .into_iter()
            .filter_map(|k| self.index.get(k).copied())
            .collect();
        while let Some(ix) = stack.pop() {
            for n in self.g.neighbors_directed(ix, Direction::Outgoing) {
                if out.insert(self.g[n].key.clone()) {
                    stack.push(n);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    /// A tiny build: inputs in a map, one template reading two facts and a
    /// source, one output reading the render. `run` re-runs what is dirty and
    /// returns the keys that ran.
    struct World {
        inputs: HashMap<Key, Digest>,
        graph: Graph,
        /// what each render produces, as a function of the inputs it reads
        template_output: fn(&HashMap<Key, Digest>) -> Digest,
    }

    fn render_key() -> Key {
        Key::Render("etc/motd".into())
    }
    fn output_key() -> Key {
        Key::Output("etc/motd".into())
    }

    impl World {
        fn new() -> World {
            let mut inputs = HashMap::new();
            inputs.insert(Key::Source("etc/motd".into()), d("tmpl"));
            inputs.insert(Key::Fact("domain".into()), d("example.org"));
            inputs.insert(Key::Fact("unused".into()), d("x"));
            World {
                inputs,
                graph: Graph::new(),
                template_output: |i| {
                    let mut h = crate::Hasher::new("t");
                    h.digest(&i[&Key::Source("etc/motd".into())]);
                    h.digest(&i[&Key::Fact("domain".into())]);
                    h.finish()
                },
            }
        }

        fn run(&mut self) -> Vec<Key> {
            let mut ran = vec![];
            let inputs = self.inputs.clone();
            let lookup = |k: &Key| inputs.get(k).copied();
            if let Verdict::Dirty(_) = self.graph.check(&render_key(), &lookup) {
                ran.push(render_key());
                let value = (self.template_output)(&inputs);
                self.graph.record(
                    render_key(),
                    Trace {
                        deps: vec![
                            (
                                Key::Source("etc/motd".into()),
                                inputs[&Key::Source("etc/motd".into())],
                            ),
                            (
                                Key::Fact("domain".into()),
                                inputs[&Key::Fact("domain".into())],
                            ),
                        ],
                        value,
                    },
                );
            }
            if let Verdict::Dirty(_) = self.graph.check(&output_key(), &lookup) {
                ran.push(output_key());
                let r = self.graph.trace(&render_key()).unwrap().value;
                self.graph.record(
                    output_key(),
                    Trace {
                        deps: vec![(render_key(), r)],
                        value: r,
                    },
                );
            }
            ran
        }
    }

    #[test]
    fn first_run_builds_everything_then_nothing() {
        let mut w = World::new();
        assert_eq!(w.run(), vec![render_key(), output_key()]);
        assert_eq!(w.run(), Vec::<Key>::new());
    }

    #[test]
    fn a_fact_the_template_did_not_read_reruns_nothing() {
        let mut w = World::new();
        w.run();
        w.inputs.insert(Key::Fact("unused".into()), d("y"));
        assert_eq!(w.run(), Vec::<Key>::new());
    }

    #[test]
    fn a_fact_the_template_read_reruns_render_and_output() {
        let mut w = World::new();
        w.run();
        w.inputs
            .insert(Key::Fact("domain".into()), d("example.net"));
        assert_eq!(w.run(), vec![render_key(), output_key()]);
    }

    #[test]
    fn identical_render_stops_propagation() {
        let mut w = World::new();
        // the render ignores the source's exact bytes: think of a comment
        // that the template strips
        w.template_output = |i| {
            crate::Hasher::new("t")
                .digest(&i[&Key::Fact("domain".into())])
                .finish()
        };
        w.run();
        w.inputs
            .insert(Key::Source("etc/motd".into()), d("tmpl with comment"));
        assert_eq!(w.run(), vec![render_key()], "output must not re-run");
    }

    #[test]
    fn check_explains_the_first_changed_dependency() {
        let mut w = World::new();
        w.run();
        w.inputs.insert(Key::Fact("domain".into()), d("b"));
        let inputs = w.inputs.clone();
        let v = w.graph.check(&render_key(), &|k| inputs.get(k).copied());
        assert_eq!(
            v,
            Verdict::Dirty(Reason::Changed {
                dep: Key::Fact("domain".into()),
                was: d("example.org"),
                now: Some(d("b")),
            })
        );
        w.inputs.remove(&Key::Source("etc/motd".into()));
        let inputs = w.inputs.clone();
        match w.graph.check(&render_key(), &|k| inputs.get(k).copied()) {
            Verdict::Dirty(Reason::Changed { dep, now: None, .. }) => {
                assert_eq!(dep, Key::Source("etc/motd".into()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn affected_follows_reverse_edges_in_dependency_order() {
        let mut w = World::new();
        w.run();
        let a: Vec<Key> = w
            .graph
            .affected([&Key::Fact("domain".into())])
            .into_iter()
            .collect();
        assert_eq!(a, vec![render_key(), output_key()]);
        assert!(w.graph.affected([&Key::Fact("unused".into())]).is_empty());
    }

    #[test]
    fn state_round_trip_and_removal_collects_inputs() {
        let mut w = World::new();
        w.run();
        let g2 = Graph::from_state(w.graph.to_state());
        assert_eq!(g2.to_state(), w.graph.to_state());
        assert_eq!(g2.len(), 2);

        let mut g = w.graph.clone();
        g.remove(&output_key());
        g.remove(&render_key());
        assert!(g.is_empty());
        assert!(g.index.is_empty(), "inputs without dependents are dropped");
    }

    #[test]
    fn rerecording_replaces_edges() {
        let mut g = Graph::new();
        let r = render_key();
        g.record(
            r.clone(),
            Trace {
                deps: vec![(Key::Fact("a".into()), d("1"))],
                value: d("v"),
            },
        );
        g.record(
            r.clone(),
            Trace {
                deps: vec![(Key::Fact("b".into()), d("1"))],
                value: d("v"),
            },
        );
        assert!(g.dependents(&Key::Fact("a".into())).is_empty());
        assert_eq!(g.dependents(&Key::Fact("b".into())), vec![&r]);
    }
}
