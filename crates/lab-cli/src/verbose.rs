//! `-v` / `--verbose` (repeatable): what lab does, as `tracing` events on
//! stderr, each stamped with the time since lab started. `-v` says what
//! lab connects to and which lab.toml line decided it, which machines a
//! selection chose, and how long builds and syncs took; `-vv` adds the
//! executor's report (units, notes) and every path a build wrote.

use lab_config::{Machine, Transport};

/// Start the subscriber (nothing is printed without `-v`).
pub fn init(level: u8, color: bool) {
    let max = match level {
        0 => return,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(max)
        .with_target(false)
        .with_ansi(color)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
}

/// Where `m` is reached, and the lab.toml line that says so.
pub fn connecting(m: &Machine) {
    let at = format!("{}:{}", crate::diag::shown(&m.at.path), m.at.line);
    if let Some(c) = &m.container {
        tracing::info!(
            "{}: connecting over ssh to root@{}:22 through its host `{}` ({at})",
            m.name,
            c.address,
            c.on
        );
        return;
    }
    match &m.transport {
        Transport::Ssh => tracing::info!(
            "{}: connecting over ssh to {}@{}:{} ({at})",
            m.name,
            m.user,
            m.host,
            m.port
        ),
        Transport::Local { root } => tracing::info!(
            "{}: local machine, root {} ({at})",
            m.name,
            crate::diag::shown(root)
        ),
    }
}

/// After a sync: how long it took; with `-vv`, the executor's report.
pub fn synced(name: &str, r: &lab_sync::SyncReport, ms: u128) {
    tracing::info!(
        "{name}: sync done in {ms} ms ({} written, {} removed, {} bytes sent)",
        r.written,
        r.removed,
        r.content_bytes
    );
    if let Some(d) = &r.apply.daemon_reload {
        tracing::debug!("{name}: executor: daemon-reload {d}");
    }
    for u in &r.apply.units {
        tracing::debug!(
            "{name}: executor: {} {}: {} ({}/{})",
            u.action,
            u.unit,
            u.result,
            u.active,
            u.sub
        );
    }
    for n in &r.apply.notes {
        tracing::debug!("{name}: executor: {n}");
    }
}
