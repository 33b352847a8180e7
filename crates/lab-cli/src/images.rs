//! `lab images`: which images and versions lab's store holds on each
//! machine, their size on disk and the bytes they share with other kept
//! versions. One connection and one command per machine, machines in
//! parallel.

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::Engine;
use lab_sync::image_store::NodeImage;
use serde_json::{json, Value};

pub struct ImagesArgs {
    pub machines: Vec<String>,
    pub json: bool,
    pub accept_new: bool,
    pub jobs: usize,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn text(style: Style, machine: &str, images: &[NodeImage]) -> String {
    let mut s = format!("{}:\n", style.bold(machine));
    if images.is_empty() {
        s.push_str("  no images\n");
        return s;
    }
    let mut rows = vec![[
        "IMAGE".to_string(),
        "USER".into(),
        "VERSION".into(),
        "FILES".into(),
        "SIZE".into(),
        "SHARED".into(),
    ]];
    for i in images {
        for v in i.versions.iter().rev() {
            rows.push([
                i.name.clone(),
                i.user.clone().unwrap_or_else(|| "root".into()),
                format!("{}{}", &v.tree[..12], if v.current { " *" } else { "" }),
                v.files.to_string(),
                mib(v.bytes),
                mib(v.shared_bytes),
            ]);
        }
    }
    let mut w = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for r in &rows {
        let mut l = String::from(" ");
        for (i, c) in r.iter().enumerate() {
            l.push(' ');
            l.push_str(&format!("{c:<width$}", width = w[i]));
        }
        s.push_str(l.trim_end());
        s.push('\n');
    }
    s
}

fn json_images(images: &[NodeImage]) -> Vec<Value> {
    images
        .iter()
        .map(|i| {
            json!({
                "name": i.name,
                "user": i.user,
                "versions": i.versions.iter().map(|v| json!({
                    "tree": v.tree,
                    "current": v.current,
                    "files": v.files,
                    "bytes": v.bytes,
                    "shared_bytes": v.shared_bytes,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub fn images(engine: &Engine, style: Style, args: &ImagesArgs) -> Result<(), Failure> {
    let machines = engine.select(&args.machines).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let project = &engine.project;
    let ssh_config = diag::ssh_config(style)?;
    let results = lab_deploy::parallel(machines, args.jobs, |m| {
        crate::verbose::connecting(m);
        let root = lab_deploy::target(project, m, engine.lab_dir()).root;
        let r = lab_deploy::connect(project, m, ssh_config.as_ref(), args.accept_new)
            .and_then(|mut t| lab_sync::image_store::list(t.as_mut(), &root));
        (m.name.clone(), r)
    });
    let mut failed = Vec::new();
    let mut doc = serde_json::Map::new();
    for (name, r) in results {
        match r {
            Ok(images) => {
                if args.json {
                    doc.insert(name, json!({ "images": json_images(&images) }));
                } else {
                    print!("{}", text(Style::stdout(), &name, &images));
                }
            }
            Err(e) => {
                let ctx = format!("machine `{name}`");
                eprint!("{}", diag::render(style, &e, Some(&ctx)));
                doc.insert(
                    name.clone(),
                    json!({ "errors": [crate::json::error_text(&e, Some(&ctx))] }),
                );
                failed.push(name);
            }
        }
    }
    if args.json {
        crate::json::print(&json!({ "machines": doc, "failed": failed }));
    }
    if !failed.is_empty() {
        return Err(Failure::Partial);
    }
    Ok(())
}
