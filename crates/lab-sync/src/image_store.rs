//! Pods' images shipped as trees: only the files a node lacks cross the
//! connection.
//!
//! Each image the machine's Quadlet files name is opened as a tree
//! (lab-images: every file by sha256, unpacked once into `.lab/images/`).
//! The node keeps lab's image store under `/var/lib/lab/images/`
//! (`image_store.sh` says what is where): files by content, mode and owner
//! (`store/SHA256.MODE.UID.GID`), each tree's list of them (`trees/ID`) and
//! the tree assembled as hard links into the store (`roots/ID/`). A sync
//! asks once which trees the node holds and which tree each user's podman
//! image of that name was made from (the image's `lab.tree` label), then,
//! per image a user lacks:
//!
//! - the podman image of that tree is there under another name: it is
//!   tagged (going back to an earlier version sends no file);
//! - the node holds the tree: it is imported (no file sent);
//! - else the node gets the files of the tree that no tree it holds has
//!   (dedup across images and versions), the tree's file list as a delta
//!   against the closest tree it holds, and the entries that differ from
//!   that tree; it checks every file's hash on arrival, assembles the new
//!   tree from a hard-link copy of the old one, checks every file the tree
//!   uses by hash again right before use (a corrupt or missing one is
//!   named, dropped and sent again, never served), and imports it.
//!
//! The import is `tar -c` of the assembled tree into `podman import` with
//! the image config's Entrypoint/Cmd/Env/WorkingDir/User/ExposedPorts as
//! `--change` lines and the tree's ID as a label: pods are `.kube` files
//! played by `podman kube play`, which takes images from podman's storage
//! only (Quadlet's `Rootfs=` exists for `.container` units alone). A stream
//! cut short leaves the store and the old image as they were; the next
//! sync sends what is still missing. The last `keep` trees of each name stay
//! on the node (rollback sends no file); the rest, and the store files no
//! kept tree uses, go.

use crate::error::SyncError;
use crate::images::{normalize, podman_as, Use};
use crate::transport::Transport;
use lab_agent::quote;
use lab_core::LabDir;
use lab_images::{Kind, Tree};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

/// The node's side (see the module's documentation).
const PROGRAM: &str = include_str!("image_store.sh");

/// [`PROGRAM`] as it is sent: without its comment lines.
fn program_text() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        PROGRAM
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    })
}

/// Where the store is, below the machine's root.
pub const STORE_DIR: &str = "/var/lib/lab/images";

/// One podman image a user has: (ID, name, tree label).
type Have = Vec<(String, String, String)>;

/// What a sync found on the node.
#[derive(Debug, Default)]
struct NodeState {
    /// Trees assembled on the node.
    roots: BTreeSet<String>,
    /// Per user (`-`: root), its images.
    users: BTreeMap<String, Have>,
}

/// What shipping a machine's images did.
#[derive(Debug, Default)]
pub struct Shipped {
    /// What to tell the user.
    pub notes: Vec<String>,
    /// Unit actions were journaled on the machine (its check changed).
    pub journaled: bool,
}

/// Ship what the machine's pods use and it lacks. `changed`: the paths this
/// sync changes (their pods restart anyway).
#[allow(clippy::too_many_arguments)]
pub fn ship(
    transport: &mut dyn Transport,
    machine: &str,
    root: &str,
    images_dir: &Path,
    lab: &LabDir,
    keep: usize,
    uses: &[Use],
    changed: &dyn Fn(&str) -> bool,
) -> Result<Shipped, SyncError> {
    // the project's images by name, opened only when a pod uses them
    let mut sources: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    if let Ok(rd) = fs_err::read_dir(images_dir) {
        for e in rd.flatten() {
            let p = e.path();
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = lab_pods::image_name(&file, p.is_dir()) {
                sources.insert(normalize(n), p.clone());
            }
        }
    }
    let mut todo: BTreeMap<(Option<String>, String), std::path::PathBuf> = BTreeMap::new();
    for u in uses {
        if let Some(p) = sources.get(&u.image) {
            todo.insert((u.user.clone(), u.image.clone()), p.clone());
        }
    }
    if todo.is_empty() {
        return Ok(Shipped::default());
    }
    let mut opened: BTreeMap<String, lab_images::Opened> = BTreeMap::new();
    for ((_, name), path) in &todo {
        if !opened.contains_key(name) {
            let short = name
                .trim_start_matches("localhost/")
                .trim_end_matches(":latest");
            let o = lab_images::open(path, short, lab).map_err(|e| SyncError::Build {
                machine: machine.to_string(),
                message: e.to_string(),
            })?;
            opened.insert(name.clone(), o);
        }
    }
    let users: BTreeSet<Option<String>> = todo.keys().map(|(u, _)| u.clone()).collect();
    let mut state = query(transport, root, &users)?;
    let mut notes = Vec::new();
    let mut journaled = false;
    for (user, name) in todo.keys() {
        let img = &opened[name];
        let key = user.clone().unwrap_or_else(|| "-".into());
        let Some(have) = state.users.get(&key) else {
            continue;
        };
        let current = have
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, t)| t.clone());
        if current.as_deref() == Some(img.id.as_str()) {
            continue;
        }
        let units = restarts(uses, user.as_deref(), name, current.is_some(), changed);
        let scoped: Vec<String> = units
            .iter()
            .map(|u| match user {
                Some(who) => format!("{who}/{u}"),
                None => u.clone(),
            })
            .collect();
        let tagged = have
            .iter()
            .find(|(_, _, t)| *t == img.id)
            .map(|h| h.0.clone());
        let mut attempt = Attempt {
            transport: &mut *transport,
            machine,
            root,
            lab,
            keep,
            user: user.as_deref(),
            name,
            img,
            scoped: &scoped,
            layered: false,
            not_layered: None,
            base: false,
        };
        let note = if let Some(id) = tagged {
            attempt.run("tag", Some(&id))?;
            format!(
                "tagged image {name} ({}) for {}: no file sent",
                &img.id[..12],
                user.as_deref().unwrap_or("root")
            )
        } else if state.roots.contains(&img.id) {
            attempt.run("import", None)?;
            format!(
                "loaded image {name} ({}) for {}: no file sent",
                &img.id[..12],
                user.as_deref().unwrap_or("root")
            )
        } else {
            let base = closest(lab, &state, &img.tree);
            let sent = attempt.ship(base, &state)?;
            format!(
                "loaded image {name} ({}) for {}: {}{}",
                &img.id[..12],
                user.as_deref().unwrap_or("root"),
                sent_text(img, sent),
                if attempt.layered {
                    ", a layer over the previous version"
                } else {
                    ""
                }
            )
        };
        if let Some(why) = attempt.not_layered.take() {
            notes.push(format!(
                "image {name}: not a layer over the previous version ({}): imported whole",
                if why.is_empty() {
                    "it has 32 layers"
                } else {
                    &why
                }
            ));
        }
        // (the next image's files may be among this one's)
        state.roots.insert(img.id.clone());
        notes.push(note);
        for u in &scoped {
            notes.push(format!(
                "restart of {u} journaled: its image {name} changed"
            ));
        }
        journaled |= !scoped.is_empty();
    }
    Ok(Shipped { notes, journaled })
}

/// The pods of `user` using `name` whose own files this sync does not
/// change: they must restart on the new image (none for a first image).
fn restarts(
    uses: &[Use],
    user: Option<&str>,
    name: &str,
    had_one: bool,
    changed: &dyn Fn(&str) -> bool,
) -> BTreeSet<String> {
    if !had_one {
        return BTreeSet::new();
    }
    uses.iter()
        .filter(|u| u.user.as_deref() == user && u.image == name)
        .filter_map(|u| {
            let dir = u.path.rsplit_once('/').map_or("", |(d, _)| d);
            let file = u.path.rsplit('/').next()?;
            let (stem, ext) = file.rsplit_once('.')?;
            if !matches!(ext, "yaml" | "yml" | "kube" | "container") {
                return None;
            }
            let own = [
                format!("{dir}/{stem}.kube"),
                format!("{dir}/{stem}.yaml"),
                format!("{dir}/{stem}.container"),
            ];
            (!own.iter().any(|p| changed(p))).then(|| format!("{stem}.service"))
        })
        .collect()
}

/// The node's trees and each user's images, in one command.
fn query(
    transport: &mut dyn Transport,
    root: &str,
    users: &BTreeSet<Option<String>>,
) -> Result<NodeState, SyncError> {
    let mut cmd = format!(
        "echo trees; ls {}{STORE_DIR}/roots 2>/dev/null || :; ",
        quote(root)
    );
    for u in users {
        let check = match u {
            Some(name) => format!(
                "id -u {q} >/dev/null 2>&1 && [ -e /var/lib/systemd/linger/{q} ] && ",
                q = quote(name)
            ),
            None => "command -v podman >/dev/null && ".to_string(),
        };
        cmd.push_str(&format!(
            "if {check}:; then echo \"user {}\"; {} 2>/dev/null || :; fi; ",
            u.as_deref().unwrap_or("-"),
            podman_as(
                u.as_deref(),
                "images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}} {{index .Labels \"lab.tree\"}}'"
            )
        ));
    }
    let out = transport.run(&cmd, &mut |_| Ok(()))?;
    let mut s = NodeState::default();
    let mut cur: Option<String> = None;
    for line in out.stdout_text().lines() {
        if line == "trees" {
            cur = None;
        } else if let Some(u) = line.strip_prefix("user ") {
            cur = Some(u.to_string());
            s.users.entry(u.to_string()).or_default();
        } else if let Some(u) = &cur {
            let mut f = line.split_whitespace();
            let (Some(id), Some(name)) = (f.next(), f.next()) else {
                continue;
            };
            let tree = f.next().filter(|t| is_hex64(t)).unwrap_or("").to_string();
            s.users.get_mut(u).expect("seen").push((
                id.trim_start_matches("sha256:").to_string(),
                name.to_string(),
                tree,
            ));
        } else if is_hex64(line.trim()) {
            s.roots.insert(line.trim().to_string());
        }
    }
    Ok(s)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The node's tree (one lab has here too) sharing most entries with `tree`.
fn closest(lab: &LabDir, state: &NodeState, tree: &Tree) -> Option<(String, Tree)> {
    let mut best: Option<(usize, String, Tree)> = None;
    for id in &state.roots {
        let Some(t) = local_tree(lab, id) else {
            continue;
        };
        let same = t
            .entries
            .iter()
            .filter(|(p, e)| tree.entries.get(*p) == Some(e))
            .count();
        if best.as_ref().is_none_or(|b| same > b.0) {
            best = Some((same, id.clone(), t));
        }
    }
    best.map(|(_, id, t)| (id, t))
}

fn local_tree(lab: &LabDir, id: &str) -> Option<Tree> {
    let t = Tree::parse(&fs_err::read_to_string(lab.image_tree_path(id)).ok()?)?;
    (t.id() == id).then_some(t)
}

/// One image for one user, going to the node.
struct Attempt<'a> {
    transport: &'a mut dyn Transport,
    machine: &'a str,
    root: &'a str,
    lab: &'a LabDir,
    keep: usize,
    user: Option<&'a str>,
    name: &'a str,
    img: &'a lab_images::Opened,
    scoped: &'a [String],
    /// The last version sent became a layer over the previous one.
    layered: bool,
    /// Why it could not (podman's words), when it was to.
    not_layered: Option<String>,
    /// A base of container machines (no podman image: `bases/NAME` is
    /// pointed at the tree).
    base: bool,
}

/// How a run of the node's program ended.
enum Ran {
    Done,
    /// Store files found corrupt or missing (dropped on the node).
    Bad(BTreeSet<String>),
    /// The base tree was gone.
    NoBase,
}

impl Attempt<'_> {
    /// Send the tree; a corrupt or missing store file, or a base that
    /// went, is sent again once. Returns (files, bytes) sent.
    fn ship(
        &mut self,
        base: Option<(String, Tree)>,
        state: &NodeState,
    ) -> Result<(usize, u64), SyncError> {
        let mut base = base;
        let mut force = BTreeSet::new();
        let mut total = (0, 0);
        for _ in 0..3 {
            let (sent, ran) = self.send(base.as_ref(), state, &force)?;
            total = (total.0 + sent.0, total.1 + sent.1);
            match ran {
                Ran::Done => return Ok(total),
                Ran::Bad(bad) => {
                    // (the node dropped its assembled trees too)
                    force.extend(bad);
                    base = None;
                }
                Ran::NoBase => base = None,
            }
        }
        Err(self.error("the node's store kept failing its checks".into()))
    }

    fn error(&self, output: String) -> SyncError {
        SyncError::Image {
            image: self.name.to_string(),
            user: self.user.unwrap_or("-").to_string(),
            output,
        }
    }

    /// The store keys the node holds, as far as lab knows its trees.
    fn node_keys(&self, state: &NodeState) -> BTreeSet<String> {
        let mut k = BTreeSet::new();
        for id in &state.roots {
            if let Some(t) = local_tree(self.lab, id) {
                k.extend(t.keys());
            }
        }
        k
    }

    fn send(
        &mut self,
        base: Option<&(String, Tree)>,
        state: &NodeState,
        force: &BTreeSet<String>,
    ) -> Result<((usize, u64), Ran), SyncError> {
        let tree = &self.img.tree;
        let keys = tree.keys();
        let keys_text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        let have = if base.is_some() {
            self.node_keys(state)
        } else {
            // (after a failed check the node dropped its trees: only
            // what is surely there, i.e. nothing, is assumed)
            if force.is_empty() {
                self.node_keys(state)
            } else {
                BTreeSet::new()
            }
        };
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| force.contains(*k) || !have.contains(*k))
            .collect();
        // the entries to place, as a tar in a temporary file (its size
        // goes first in the stream)
        let delta = tree.delta(base.map(|b| &b.1));
        // podman's image of the base tree for this user, when the new
        // version can be a layer over it (the same config: a commit keeps
        // its base's)
        let layer_over: Option<String> = base
            .filter(|b| !self.base && b.1.config == tree.config)
            .and_then(|b| {
                state
                    .users
                    .get(self.user.unwrap_or("-"))?
                    .iter()
                    .find(|h| h.2 == b.0)
                    .map(|h| h.0.clone())
            });
        let place = tempfile::tempfile().map_err(|e| self.error(e.to_string()))?;
        let mut place_w = std::io::BufWriter::new(&place);
        tree.structure_tar(
            &delta.place,
            &format!("roots/.new.{}", self.img.id),
            "store",
            &mut place_w,
        )
        .map_err(|e| self.error(format!("writing the tree: {e}")))?;
        place_w.flush().map_err(|e| self.error(e.to_string()))?;
        drop(place_w);
        let blobs = self.lab.image_blobs_dir();
        let mut files_sent = (0usize, 0u64);
        let mut unreadable = None;
        let store = self.program(
            "ship",
            base.map(|b| b.0.as_str()),
            &keys_text,
            layer_over.is_some(),
        );
        let program = self.import_and_tag(&store, None, layer_over.as_deref());
        let out = self.run_program(&program, &mut |w| {
            // (gzip: a tar of a few small entries is mostly padding, and
            // an image's files compress too)
            let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
            let mut b = tar::Builder::new(&mut gz);
            let mut small = |name: &str, data: &[u8]| -> std::io::Result<()> {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o600);
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, data)
            };
            match base {
                Some((_, old)) => {
                    let old_keys = old.keys();
                    let add: String = keys
                        .difference(&old_keys)
                        .map(|k| format!("{k}\n"))
                        .collect();
                    let del: String = old_keys
                        .difference(&keys)
                        .map(|k| format!("{k}\n"))
                        .collect();
                    small("keys.add", add.as_bytes())?;
                    small("keys.del", del.as_bytes())?;
                    small("remove", &nul_list(&delta.remove))?;
                    if layer_over.is_some() {
                        // (the paths the layer places)
                        small("place0", &nul_list(&delta.place))?;
                    }
                }
                None => small("keys", keys_text.as_bytes())?,
            }
            let mut f = &place;
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
            let len = place.metadata()?.len();
            let mut h = tar::Header::new_gnu();
            h.set_size(len);
            h.set_mode(0o600);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "place.tar", &mut f)?;
            for k in &missing {
                let mut parts = k.split('.');
                let (Some(sha), Some(mode), Some(uid), Some(gid)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let path = blobs.join(sha);
                let file = match fs_err::File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        unreadable = Some(e.to_string());
                        return Ok(());
                    }
                };
                let size = file.metadata()?.len();
                let mut h = tar::Header::new_gnu();
                h.set_size(size);
                h.set_mode(u32::from_str_radix(mode, 8).unwrap_or(0o644));
                h.set_uid(uid.parse().unwrap_or(0));
                h.set_gid(gid.parse().unwrap_or(0));
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, format!("blobs/{k}"), std::io::BufReader::new(file))?;
                files_sent = (files_sent.0 + 1, files_sent.1 + size);
            }
            b.finish()?;
            drop(b);
            gz.finish().map(|_| ())
        })?;
        if let Some(e) = unreadable {
            return Err(self.error(format!(
                "{e} (the image's unpacked files in .lab/images/ changed; sync again)"
            )));
        }
        let ran = self.outcome(&out)?;
        let said = out.stdout_text();
        self.layered = said.lines().any(|l| l == "lab-layer");
        self.not_layered = said
            .lines()
            .find_map(|l| l.strip_prefix("lab-layer-failed "))
            .map(|why| why.trim().to_string());
        Ok((files_sent, ran))
    }

    /// Run the node's program in mode `tag` (podman image `id` given the
    /// name) or `import`, then import or tag.
    fn run(&mut self, mode: &str, id: Option<&str>) -> Result<(), SyncError> {
        let program = self.import_and_tag(&self.program(mode, None, "", false), id, None);
        let out = self.run_program(&program, &mut |_| Ok(()))?;
        match self.outcome(&out)? {
            Ran::Done => Ok(()),
            Ran::Bad(bad) => Err(self.error(format!(
                "the node's store lost files of this image ({}); sync again to send them",
                bad.into_iter().collect::<Vec<_>>().join(", ")
            ))),
            Ran::NoBase => Err(self.error("base gone".into())),
        }
    }

    fn outcome(&self, out: &crate::transport::Output) -> Result<Ran, SyncError> {
        match out.status {
            0 => Ok(Ran::Done),
            4 => Ok(Ran::Bad(
                out.stdout_text()
                    .lines()
                    .filter_map(|l| l.strip_prefix("bad "))
                    .map(str::to_string)
                    .collect(),
            )),
            5 => Ok(Ran::NoBase),
            _ => Err(self.error(format!("{}{}", out.stdout_text(), out.stderr_text()))),
        }
    }

    /// The node's program, its variables set.
    /// `layer`: the new version becomes a layer over podman's image of
    /// the base (the store leaves the lists [`Attempt::layer`] reads).
    fn program(&self, mode: &str, base: Option<&str>, keys_text: &str, layer: bool) -> String {
        use sha2::{Digest as _, Sha256};
        let ksha = hex::encode(Sha256::digest(keys_text.as_bytes()));
        let (nf, bl) = if self.base {
            (
                format!("{BASES_USER}/{}", hex::encode(self.name.as_bytes())),
                self.name,
            )
        } else {
            (
                format!(
                    "{}/{}",
                    self.user.unwrap_or("-"),
                    hex::encode(self.name.as_bytes())
                ),
                "",
            )
        };
        format!(
            "trap '' HUP PIPE; I={}{STORE_DIR} T={} B={} KSHA={ksha} KEEP={} M={mode} D={} NF={} BL={} sh -c {}",
            quote(self.root),
            self.img.id,
            base.unwrap_or(""),
            self.keep.max(1),
            u8::from(layer),
            quote(&nf),
            quote(bl),
            quote(program_text())
        )
    }

    /// The shell that makes the new version podman's image `base` plus a
    /// layer of what changed (`incoming/T.place0` placed from the
    /// assembled tree, `incoming/T.remove0` removed first: the store
    /// program leaves them), committed under the name with the tree's
    /// label; it fails, saying why on stderr (for a full import instead),
    /// when podman cannot, or when `base` has 32 layers already. Only the
    /// changed files are read and written, where an import copies the
    /// whole tree into podman's storage again.
    /// Run as the image's user by `lab_p` (see [`Attempt::import_and_tag`]).
    fn layer(&self, base: &str) -> String {
        let p = |args: &str| format!("lab_p {args}");
        // (a rootless user's container is mounted and written in its
        // user namespace)
        let inside = |cmd: &str| match self.user {
            Some(_) => format!("lab_p unshare {cmd}"),
            None => cmd.to_string(),
        };
        let commit = with_config(
            "commit -q",
            &self.img.tree.config.changes(),
            &self.img.id,
            "\"$c\"",
            self.name,
        );
        let d = format!("{}{STORE_DIR}/incoming/{}", quote(self.root), self.img.id);
        let r = format!("{}{STORE_DIR}/roots/{}", quote(self.root), self.img.id);
        format!(
            "( n=$( {inspect} ) && [ \"$n\" -lt 32 ] && [ -f {d}.place0 ] && c=$( {create} ) || exit 1\n\
             ok=1\n\
             m=$( {mount} ) && \
             {inside_rm} <{d}.remove0 && \
             tar -C {r} -c --hard-dereference --numeric-owner --no-recursion --null -T {d}.place0 -f - | {inside_tar} && \
             ok=0\n\
             {umount} >/dev/null 2>&1\n\
             [ $ok = 0 ] && {commit}; ok=$?\n\
             {rm} >/dev/null 2>&1\n\
             rm -f {d}.place0 {d}.remove0\n\
             exit $ok )",
            inspect = p(&format!(
                "image inspect --format '{{{{len .RootFS.Layers}}}}' {}",
                quote(base)
            )),
            // (without podman's own variables, which a commit would keep)
            create = p(&format!(
                "create -q --pull=never --unsetenv-all {}",
                quote(base)
            )),
            mount = inside("podman mount \"$c\""),
            inside_rm = inside("sh -c 'cd \"$1\" && xargs -0 -r rm -rf --' sh \"$m\""),
            inside_tar = inside(
                "sh -c 'cd \"$1\" && tar -x -p --same-owner --numeric-owner -f -' sh \"$m\""
            ),
            umount = inside("podman umount \"$c\""),
            commit = p(&commit),
            rm = p("rm -f \"$c\""),
        )
    }

    /// Run `program` on the node (its library named when the node keeps
    /// it).
    fn run_program(
        &mut self,
        program: &str,
        input: crate::transport::Input<'_>,
    ) -> Result<crate::transport::Output, SyncError> {
        let on = crate::library::On {
            lab: self.lab,
            machine: self.machine,
            root: self.root,
            systemd: true,
        };
        crate::library::run_program(&mut *self.transport, &on, program, input)
    }

    /// The program that runs `store` (the node's program), then imports
    /// the assembled tree (or tags podman's image `id`) under the name,
    /// the pods' restarts journaled in the same command.
    /// `layer_over`: podman's image of the base tree, which the new
    /// version becomes a layer over (see [`Attempt::layer`]) when it can.
    /// A base of container machines is the store's program alone.
    fn import_and_tag(&self, store: &str, id: Option<&str>, layer_over: Option<&str>) -> String {
        if self.base {
            return store.to_string();
        }
        let change = match id {
            Some(id) => podman_as(self.user, &format!("tag {id} {}", quote(self.name))),
            None => {
                let args = with_config(
                    "import -q",
                    &self.img.tree.config.changes(),
                    &self.img.id,
                    "-",
                    self.name,
                );
                // (`lab_p`: podman as the image's user; `$( (`, never
                // `$((`: that is arithmetic)
                let full = format!(
                    "lab_p() {{ {}; }}\n\
                     tar -C {}{STORE_DIR}/roots/{} -c --hard-dereference --numeric-owner -f - . | lab_p {args} >/dev/null",
                    podman_as(self.user, "\"$@\""),
                    quote(self.root),
                    self.img.id,
                );
                match layer_over {
                    Some(base) => format!(
                        "lab_p() {{ {}; }}\n\
                         if lab_e=$( {} 2>&1 >/dev/null); then echo lab-layer; else \
                         echo \"lab-layer-failed $(printf %s \"$lab_e\" | tr '\\n' ' ' | cut -c1-400)\"; {full}; fi",
                        podman_as(self.user, "\"$@\""),
                        self.layer(base)
                    ),
                    None => full,
                }
            }
        };
        if self.scoped.is_empty() {
            format!("{store} && {{ {change}; }}")
        } else {
            let actions: Vec<(&str, &str)> = self
                .scoped
                .iter()
                .map(|u| ("restart", u.as_str()))
                .collect();
            lab_agent::enqueue_program(store, &actions, &change)
        }
    }
}

/// Tree paths as `./PATH` entries, each ended by a NUL (for `xargs -0`
/// and `tar --null -T`).
fn nul_list(paths: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(b"./");
        out.extend_from_slice(&lab_images::decode(p));
        out.push(0);
    }
    out
}

/// podman `verb` (`import -q`, `commit -q`) of `source` as image `name`
/// with the tree's config (`changes`) and its `lab.tree` label.
fn with_config(verb: &str, changes: &[String], tree: &str, source: &str, name: &str) -> String {
    let mut args = verb.to_string();
    for c in changes {
        args.push_str(&format!(" --change {}", quote(c)));
    }
    args.push_str(&format!(
        " --change {} {source} {}",
        quote(&format!("LABEL lab.tree={tree}")),
        quote(name)
    ));
    args
}

/// The user under `names/` whose histories are the bases of container
/// machines (`lab images` lists them under it).
pub const BASES_USER: &str = "+machines";

/// Where a host's container machines find the tree of the project's image
/// `name` they are based on: a link to `roots/ID`, pointed at a new tree
/// when a new version is shipped (a container's root is mounted from
/// where it points at its start).
pub fn base_path(name: &str) -> String {
    format!("{STORE_DIR}/bases/{name}")
}

/// Ship the project's image `name` (`images/NAME.tar` or `images/NAME/`)
/// to the host `t` reaches as a base of container machines: only the
/// files the host's store lacks are sent, and [`base_path`] is pointed at
/// the tree. Returns a note when the host's base changed.
pub fn ship_base(
    transport: &mut dyn Transport,
    host: &str,
    images_dir: &Path,
    lab: &LabDir,
    keep: usize,
    name: &str,
) -> Result<Option<String>, SyncError> {
    let source = [
        images_dir.join(format!("{name}.tar")),
        images_dir.join(name),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| SyncError::Build {
        machine: host.to_string(),
        message: format!(
            "image `{name}` is not in the project (no `{}` nor `{}`)",
            images_dir.join(format!("{name}.tar")).display(),
            images_dir.join(name).display()
        ),
    })?;
    let img = lab_images::open(&source, name, lab).map_err(|e| SyncError::Build {
        machine: host.to_string(),
        message: e.to_string(),
    })?;
    let out = transport.run(
        &format!(
            "cd {STORE_DIR} 2>/dev/null || exit 0; ls roots 2>/dev/null || :; \
             echo base $(readlink {} 2>/dev/null)",
            quote(&format!("bases/{name}"))
        ),
        &mut |_| Ok(()),
    )?;
    let mut state = NodeState::default();
    let mut current = "";
    let text = out.stdout_text();
    for line in text.lines() {
        if let Some(l) = line.strip_prefix("base ") {
            current = l.trim();
        } else if is_hex64(line.trim()) {
            state.roots.insert(line.trim().to_string());
        }
    }
    let have_root = state.roots.contains(&img.id);
    if have_root && current == format!("../roots/{}", img.id) {
        return Ok(None);
    }
    let mut attempt = Attempt {
        transport,
        machine: host,
        root: "",
        lab,
        keep,
        user: None,
        name,
        img: &img,
        scoped: &[],
        base: true,
        layered: false,
        not_layered: None,
    };
    let note = if have_root {
        attempt.run("tag", None)?;
        format!(
            "base {name} ({}) of container machines: no file sent",
            &img.id[..12]
        )
    } else {
        let sent = attempt.ship(closest(lab, &state, &img.tree), &state)?;
        format!(
            "base {name} ({}) of container machines: {}",
            &img.id[..12],
            sent_text(&img, sent)
        )
    };
    Ok(Some(note))
}

/// `N of M files, B bytes of files sent` of a ship of `img`.
fn sent_text(img: &lab_images::Opened, sent: (usize, u64)) -> String {
    format!(
        "{} of {} files, {} bytes of files sent",
        sent.0,
        img.tree
            .entries
            .values()
            .filter(|e| e.kind == Kind::File)
            .count(),
        sent.1
    )
}

/// One version of an image on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeVersion {
    /// The tree's ID.
    pub tree: String,
    /// The version the name was given last.
    pub current: bool,
    pub files: u64,
    /// Bytes of its files in the store.
    pub bytes: u64,
    /// Of those, the bytes of files another kept tree uses too.
    pub shared_bytes: u64,
}

/// An image name of one user on a node, with its kept versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeImage {
    /// `None`: root's.
    pub user: Option<String>,
    pub name: String,
    /// Oldest first.
    pub versions: Vec<NodeVersion>,
}

/// What lab's store on the machine holds (`lab images`), in one command.
pub fn list(transport: &mut dyn Transport, root: &str) -> Result<Vec<NodeImage>, SyncError> {
    let sum = "{ s=0; while read -r n; do s=$((s+n)); done; echo $s; }";
    let cmd = format!(
        "cd {}{STORE_DIR} 2>/dev/null || exit 0; \
         for t in $(ls trees 2>/dev/null); do \
           n=$(wc -l <trees/$t); \
           b=$(sed 's|^|store/|' trees/$t | xargs -r stat -c %s 2>/dev/null | {sum}); \
           s=$(cat trees/* | LC_ALL=C sort | uniq -d | grep -xF -f - trees/$t | sed 's|^|store/|' | \
               xargs -r stat -c %s 2>/dev/null | {sum}); \
           echo \"tree $t $n $b $s\"; \
         done; \
         for f in names/*/*; do [ -f \"$f\" ] || continue; echo \"name $f\"; cat \"$f\"; done",
        quote(root)
    );
    let out = transport.run(&cmd, &mut |_| Ok(()))?;
    if out.status != 0 {
        return Err(SyncError::Protocol {
            status: out.status,
            output: out.stderr_text(),
        });
    }
    let mut trees: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut images: Vec<NodeImage> = Vec::new();
    for line in out.stdout_text().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["tree", t, n, b, s] => {
                let p = |x: &str| x.parse().unwrap_or(0);
                trees.insert(t.to_string(), (p(n), p(b), p(s)));
            }
            ["name", path] => {
                let mut parts = path.trim_start_matches("names/").splitn(2, '/');
                let (Some(user), Some(hexname)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Some(name) = hex::decode(hexname)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                else {
                    continue;
                };
                images.push(NodeImage {
                    user: (user != "-").then(|| user.to_string()),
                    name,
                    versions: Vec::new(),
                });
            }
            [t, _] if is_hex64(t) => {
                if let (Some(img), Some(&(files, bytes, shared_bytes))) =
                    (images.last_mut(), trees.get(*t))
                {
                    img.versions.retain(|v| v.tree != *t);
                    img.versions.push(NodeVersion {
                        tree: t.to_string(),
                        current: false,
                        files,
                        bytes,
                        shared_bytes,
                    });
                }
            }
            _ => {}
        }
    }
    for img in &mut images {
        if let Some(v) = img.versions.last_mut() {
            v.current = true;
        }
    }
    Ok(images)
}

/// After a rollback to generation `gen`: each image name goes back to the
/// tree it had when `gen` was made (the names' histories on the node),
/// tagged again or imported from the node's store (no file is sent), and
/// the running pods of its user that use it restart on it. A version the
/// node no longer keeps is said, not sent (the next sync sends it).
pub fn restore(
    transport: &mut dyn Transport,
    root: &str,
    gen: u64,
    keep: usize,
    lab: &LabDir,
) -> Result<Vec<String>, SyncError> {
    let cmd = format!(
        "I={r}{STORE_DIR}; S={r}/var/lib/lab; \
         gt=$(stat -c %.9Y \"$S/gen/{gen}/digest\" 2>/dev/null | tr -d .) || exit 0; [ -n \"$gt\" ] || exit 0; \
         for f in \"$I\"/names/*/*; do [ -f \"$f\" ] || continue; want=; \
           while read -r t at; do at=$(printf %s \"$at\" | tr -d .); [ \"$at\" -le \"$gt\" ] && want=$t; done <\"$f\"; \
           [ -n \"$want\" ] && echo \"want ${{f#$I/names/}} $want\"; \
         done; echo roots; ls \"$I/roots\" 2>/dev/null || :",
        r = quote(root)
    );
    let out = transport.run(&cmd, &mut |_| Ok(()))?;
    let mut wants: Vec<(Option<String>, String, String)> = Vec::new();
    for line in out.stdout_text().lines() {
        let Some(rest) = line.strip_prefix("want ") else {
            continue;
        };
        let (Some(path), Some(tree)) = (rest.split(' ').next(), rest.split(' ').nth(1)) else {
            continue;
        };
        let Some((user, hexname)) = path.split_once('/') else {
            continue;
        };
        let Some(name) = hex::decode(hexname)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            continue;
        };
        wants.push((
            (user != "-").then(|| user.to_string()),
            name,
            tree.to_string(),
        ));
    }
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    let users: BTreeSet<Option<String>> = wants.iter().map(|w| w.0.clone()).collect();
    let state = query(transport, root, &users)?;
    let mut notes = Vec::new();
    for (user, name, tree) in wants {
        let key = user.clone().unwrap_or_else(|| "-".into());
        let Some(have) = state.users.get(&key) else {
            continue;
        };
        let current = have
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|h| h.2.clone());
        if current.as_deref() == Some(tree.as_str()) {
            continue;
        }
        let who = user.as_deref().unwrap_or("root");
        let nf = format!("{key}/{}", hex::encode(name.as_bytes()));
        let program = |mode: &str| {
            format!(
                "trap '' HUP PIPE; I={}{STORE_DIR} T={tree} B= KSHA= KEEP={} M={mode} NF={} sh -c {} && ",
                quote(root),
                keep.max(1),
                quote(&nf),
                quote(program_text())
            )
        };
        let change = if let Some((id, _, _)) = have.iter().find(|h| h.2 == tree) {
            format!(
                "{}{}",
                program("tag"),
                podman_as(user.as_deref(), &format!("tag {id} {}", quote(&name)))
            )
        } else if state.roots.contains(&tree) {
            // (its config is in lab's copy of the tree)
            let Some(config) = local_tree(lab, &tree).map(|t| t.config.changes()) else {
                notes.push(format!(
                    "image {name} for {who}: version {} is not kept here; the next sync sends it",
                    &tree[..12]
                ));
                continue;
            };
            let args = with_config("import -q", &config, &tree, "-", &name);
            format!(
                "{}tar -C {}{STORE_DIR}/roots/{tree} -c --hard-dereference --numeric-owner -f - . | {} >/dev/null",
                program("import"),
                quote(root),
                podman_as(user.as_deref(), &args)
            )
        } else {
            notes.push(format!(
                "image {name} for {who}: version {} is not kept here; the next sync sends it",
                &tree[..12]
            ));
            continue;
        };
        // the running pods of that user naming it restart on it
        let dir = match &user {
            Some(_) => format!("{}/{}", root, lab_pods::ROOTLESS_DIR),
            None => format!("{}/{}", root, lab_pods::ROOTFUL_DIR),
        };
        let ctl = match &user {
            Some(u) => format!("systemctl --user -M {}@", quote(u)),
            None => "systemctl".into(),
        };
        let restart = format!(
            "for y in $(grep -l -F {pat} {d}/*.yaml 2>/dev/null); do u=$(basename \"$y\" .yaml).service; \
             {ctl} try-restart \"$u\" && echo \"restarted $u\"; done",
            pat = quote(&format!("image: \"{name}\"")),
            d = quote(&dir),
        );
        let out = transport.run(&format!("{change} && {{ {restart}; }}"), &mut |_| Ok(()))?;
        if out.status != 0 {
            return Err(SyncError::Image {
                image: name,
                user: key,
                output: format!("{}{}", out.stdout_text(), out.stderr_text()),
            });
        }
        notes.push(format!(
            "image {name} for {who} back on version {}: no file sent",
            &tree[..12]
        ));
        for l in out.stdout_text().lines() {
            if let Some(u) = l.strip_prefix("restarted ") {
                notes.push(format!(
                    "restarted {}{u} on it",
                    user.as_deref().map(|u| format!("{u}/")).unwrap_or_default()
                ));
            }
        }
    }
    Ok(notes)
}
