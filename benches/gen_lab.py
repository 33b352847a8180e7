#!/usr/bin/env python3
"""Generate a synthetic lab and the equivalent GNU make + m4 pipeline.

    benches/gen_lab.py OUT --sources N [--layers L] [--machines M] [--seed S]

OUT receives, side by side:

  lab.toml, layers/, machines/   the lab project (templates are `*.j2`)
  make-src/                      the `.m4` twin of every template, at the
                                 same path plus `.m4` (plain files and
                                 symlinks are shared with the lab project:
                                 make copies them from layers/ and machines/)
  facts.mk                       the facts, as `-D` options for m4
  Makefile                       one `cp -p` rule per plain file, one `m4`
                                 rule per template, per machine, into
                                 make-out/<machine>/
  bench-meta.json                what the runner needs: counts, the file to
                                 edit, the fact to change, expected outputs

Shape (N = number of sources: regular files and symlinks under layers/ and
machines/; directories are not counted):

  * M machines (default 8).
  * L layers (default N/250 clamped to [4, 100]: 4 at 1k, 40 at 10k, 100 at
    100k) plus the base layer `_`, which every machine gets first.
  * `_` holds 10% of N; each machine directory holds max(4, N/400) files
    (a quarter of them override a path of `_` or of a cross-layer shared
    path); the rest is spread evenly over the L layers.
  * Each machine uses `_` plus a random third of the layers (at least one),
    in random order; every layer is used by at least one machine.
  * About 2% of a layer's files override a path of `_`, about 1% provide a
    path that several layers provide (later layer wins), about 0.5% are
    relative symlinks to a sibling file of the same layer.
  * ~10% of regular files are templates; each reads 1-3 facts out of
    `domain admin_email ssh_port ntp_server log_level` (global, some
    overridden per machine) and `machine role ip zone` (per machine). The
    fact `backup_host` is read by exactly 4 templates: it is the fact the
    runner changes.
  * Files sit in realistic trees (etc/<svc>/conf.d/..., usr/local/share/<svc>/...,
    usr/local/bin, etc/systemd/system, ...), 1-6 directory levels deep, about
    15 files per directory, sizes log-uniform between 200 B and 4 KiB.
    Scripts under usr/local/bin and `*.sh` are mode 0755, the rest 0644.

Everything is deterministic for a given seed. Standard library only.
"""

import argparse
import json
import math
import os
import random
import shutil
import sys

SERVICES = [
    "nginx", "postgres", "redis", "grafana", "prometheus", "wireguard",
    "unbound", "caddy", "minio", "gitea", "nextcloud", "mosquitto",
    "haproxy", "keepalived", "chrony", "fail2ban", "restic", "loki",
    "promtail", "alertmanager", "vaultwarden", "syncthing", "jellyfin",
    "headscale", "coredns", "traefik", "rabbitmq", "memcached", "bind",
    "dovecot", "postfix", "rspamd", "opendkim", "certbot", "node-exporter",
    "cadvisor", "podman", "borg", "samba", "nfs",
]
MACHINE_NAMES = ["web1", "web2", "db1", "db2", "cache1", "mon1", "vpn1", "dev1"]
ROLES = {"web": "web", "db": "db", "cache": "cache", "mon": "monitoring",
         "vpn": "vpn", "dev": "dev"}
SUBDIRS = ["conf.d", "snippets", "rules", "policies", "scripts", "tls",
           "plugins", "hooks", "templates", "sites", "profiles", "filters",
           "dashboards", "alerts", "zones", "keys", "maps", "units"]
STEMS = ["main", "local", "default", "cache", "limits", "upstream", "backend",
         "frontend", "tuning", "auth", "access", "logging", "metrics",
         "storage", "network", "cluster", "worker", "queue", "policy",
         "filter", "zone", "acl", "proxy", "ssl", "gzip", "security", "paths",
         "env", "retention", "schedule"]
EXTS = ["conf", "conf", "conf", "yaml", "json", "ini", "env", "rules", "txt",
        "sh", "toml", "list"]
VERBS = ["backup", "rotate", "check", "sync", "deploy", "prune", "report",
         "migrate", "renew", "status"]
KEYS = ["timeout", "retries", "max_connections", "buffer_size", "workers",
        "listen", "threads", "keepalive", "cache_size", "log_format",
        "interval", "limit", "path", "user", "group", "enabled", "level",
        "port", "backend", "weight", "ttl", "window", "burst", "rate",
        "compression", "verify", "prefix", "suffix", "mode", "policy"]
VALUES = ["on", "off", "yes", "no", "true", "false", "auto", "strict",
          "relaxed", "/var/lib/data", "/run/service.sock", "/etc/ssl/private",
          "127.0.0.1", "0.0.0.0", "::1", "65536", "1024", "30s", "5m", "12h",
          "7d", "info", "warn", "gzip", "zstd", "round-robin", "least-conn",
          "tcp", "udp", "www-data", "nobody", "0644", "utf-8", "json", "text"]

# Facts: name -> value; templates reference them as {{ name }} (lab) and
# LAB_NAME (m4, defined with -D).
GLOBAL_FACTS = {
    "domain": "example.org",
    "admin_email": "ops@example.org",
    "ssh_port": 22,
    "ntp_server": "ntp.example.org",
    "log_level": "info",
    "backup_host": "backup.example.org",
}
COMMON_FACTS = ["domain", "admin_email", "ssh_port", "ntp_server",
                "log_level", "machine", "role", "ip", "zone"]
CHANGED_FACT = "backup_host"
CHANGED_FACT_READERS = 4
SIZE_MIN, SIZE_MAX = 200, 4096


def default_layers(n):
    return max(4, min(100, n // 250))


def m4_name(fact):
    return "LAB_" + fact.upper()


class Src:
    """One source: kind is 'file', 'tmpl' or 'link'."""

    __slots__ = ("kind", "mode", "size", "facts", "target", "seed")

    def __init__(self, kind, mode=0o644, size=0, facts=(), target=None, seed=0):
        self.kind = kind
        self.mode = mode
        self.size = size
        self.facts = list(facts)
        self.target = target
        self.seed = seed

    def src_rel(self, out):
        return out + ".j2" if self.kind == "tmpl" else out


class Plan:
    def __init__(self, n, n_layers, n_machines, seed, template_share):
        self.n = n
        self.rng = random.Random(seed)
        self.template_share = template_share
        self.layer_names = [
            SERVICES[i % len(SERVICES)] + (str(i // len(SERVICES) + 1) if i >= len(SERVICES) else "")
            for i in range(n_layers)
        ]
        self.machine_names = [
            MACHINE_NAMES[i] if i < len(MACHINE_NAMES) else f"host{i + 1:02d}"
            for i in range(n_machines)
        ]
        # root name ("layers/_", "layers/nginx", "machines/web1") -> {out path: Src}
        self.roots = {}
        # out paths that may never be overridden (symlink targets)
        self.private = set()
        self.seed_counter = 0
        self.plan()

    # -- helpers ---------------------------------------------------------
    def next_seed(self):
        self.seed_counter += 1
        return self.seed_counter

    def size(self):
        return int(math.exp(self.rng.uniform(math.log(SIZE_MIN), math.log(SIZE_MAX))))

    def regular(self, out, allow_template=True):
        """A plain file or template at out."""
        r = self.rng
        name = out.rsplit("/", 1)[-1]
        mode = 0o755 if (out.startswith("usr/local/bin/") or name.endswith(".sh")) else 0o644
        if allow_template and mode == 0o644 and r.random() < self.template_share:
            facts = r.sample(COMMON_FACTS, r.randint(1, 3))
            return Src("tmpl", 0o644, self.size(), facts, seed=self.next_seed())
        return Src("file", mode, self.size(), seed=self.next_seed())

    def tree(self, tag, count, private_prefixes, common=True):
        """`count` new out paths for a root tagged `tag`, ~15 per directory."""
        r = self.rng
        n_dirs = max(1, math.ceil(count / 15))
        dirs = []
        seen = set()
        while len(dirs) < n_dirs:
            d = r.choice(private_prefixes)
            for _ in range(r.choice([0, 1, 1, 2, 2, 3])):
                d += "/" + r.choice(SUBDIRS) + (str(r.randint(1, 9)) if r.random() < 0.5 else "")
            if d in seen and len(seen) < 10 * n_dirs:
                continue
            seen.add(d)
            dirs.append(d)
        outs = []
        for i in range(count):
            if common and r.random() < 0.04:
                kind = r.randrange(4)
                if kind == 0:
                    outs.append(f"usr/local/bin/{tag}-{r.choice(VERBS)}{i}")
                elif kind == 1:
                    outs.append(f"etc/systemd/system/{tag}-{r.choice(STEMS)}{i}.{r.choice(['service', 'timer', 'socket'])}")
                elif kind == 2:
                    outs.append(f"etc/logrotate.d/{tag}-{i}")
                else:
                    outs.append(f"etc/sysctl.d/60-{tag}-{i}.conf")
            else:
                d = dirs[i % n_dirs]
                outs.append(f"{d}/{r.choice(STEMS)}{i}.{r.choice(EXTS)}")
        return outs

    # -- the plan --------------------------------------------------------
    def plan(self):
        r = self.rng
        n = self.n
        n_layers = len(self.layer_names)
        per_machine = max(4, n // 400)
        n_base = round(0.10 * n)
        n_layer_total = n - n_base - per_machine * len(self.machine_names)
        assert n_layer_total >= n_layers, "too few sources for that many layers"

        # base layer
        base = {}
        for out in self.tree("base", n_base, ["etc/base", "etc/ssh/sshd_config.d",
                                              "etc/profile.d", "usr/local/lib/base",
                                              "usr/local/share/base", "etc/apt/apt.conf.d"]):
            base[out] = self.regular(out)
        self.roots["layers/_"] = base
        base_paths = sorted(base)

        # cross-layer shared paths: several layers provide them
        shared = [f"etc/shared/{r.choice(SUBDIRS)}/{r.choice(STEMS)}-shared{i}.conf"
                  for i in range(max(4, n_layers))]

        # layers
        for li, name in enumerate(self.layer_names):
            budget = n_layer_total // n_layers + (1 if li < n_layer_total % n_layers else 0)
            files = {}
            n_override = max(1, round(0.02 * budget))
            n_shared = max(1, round(0.01 * budget))
            n_links = max(1, round(0.005 * budget)) if budget >= 50 else 0
            n_own = budget - n_override - n_shared - n_links
            own = self.tree(name, n_own, [f"etc/{name}", f"etc/{name}/conf.d",
                                         f"usr/local/share/{name}", f"usr/local/lib/{name}",
                                         f"var/lib/{name}", f"etc/{name}/{r.choice(SUBDIRS)}"])
            for out in own:
                files[out] = self.regular(out)
            for out in r.sample(base_paths, min(n_override, len(base_paths))):
                files[out] = self.regular(out)
            for out in r.sample(shared, min(n_shared, len(shared))):
                files[out] = self.regular(out)
            # symlinks to a plain sibling in a private directory of this layer
            plain_private = [o for o in own if files[o].kind == "file"
                             and o.startswith((f"etc/{name}/", f"usr/local/share/{name}/",
                                               f"usr/local/lib/{name}/", f"var/lib/{name}/"))]
            for k in range(n_links):
                if not plain_private:
                    break
                tgt = r.choice(plain_private)
                d, base_name = tgt.rsplit("/", 1)
                link = f"{d}/current{k}-{base_name}"
                files[link] = Src("link", 0o777, target=base_name)
                self.private.add(tgt)
                self.private.add(link)
            self.roots[f"layers/{name}"] = files

        # machines: layer selection
        self.machine_layers = {}
        for m in self.machine_names:
            k = max(1, round(n_layers / 3))
            self.machine_layers[m] = r.sample(self.layer_names, k)
        used = {l for ls in self.machine_layers.values() for l in ls}
        for l in self.layer_names:
            if l not in used:
                self.machine_layers[r.choice(self.machine_names)].append(l)

        # machine facts
        self.machine_facts = {}
        for i, m in enumerate(self.machine_names):
            role = next((v for k, v in ROLES.items() if m.startswith(k)), "generic")
            f = {"role": role, "ip": f"10.20.0.{11 + i}", "zone": ["ams1", "fra1", "par1"][i % 3]}
            if i == 1:
                f["log_level"] = "debug"
            if m.startswith("dev"):
                f["domain"] = "dev.example.org"
            self.machine_facts[m] = f

        # machine-specific files
        for m in self.machine_names:
            files = {}
            n_ov = per_machine // 4
            own = self.tree(m, per_machine - n_ov, [f"etc/{m}", "etc/machine", "usr/local/etc",
                                                  f"etc/machine/{r.choice(SUBDIRS)}"], common=False)
            for out in own:
                files[out] = self.regular(out)
            pool = [p for p in base_paths + shared if p not in self.private]
            for out in r.sample(pool, min(n_ov, len(pool))):
                files[out] = self.regular(out)
            self.roots[f"machines/{m}"] = files

        self.resolve()
        self.choose_changed_fact_readers()
        self.choose_edit_file()
        self.check()

    def stack(self, m):
        return ["layers/_"] + [f"layers/{l}" for l in self.machine_layers[m]] + [f"machines/{m}"]

    def resolve(self):
        """Winner of every output path per machine: {m: {out: root}}."""
        self.winners = {}
        for m in self.machine_names:
            w = {}
            for root in self.stack(m):
                for out in self.roots[root]:
                    w[out] = root
            self.winners[m] = w

    def choose_changed_fact_readers(self):
        r = self.rng
        # templates that win for at least one machine
        winning = sorted({(root, out) for m in self.machine_names
                          for out, root in self.winners[m].items()
                          if self.roots[root][out].kind == "tmpl"})
        if len(winning) < CHANGED_FACT_READERS:
            sys.exit("too few templates to pick the readers of the changed fact")
        self.fact_readers = r.sample(winning, CHANGED_FACT_READERS)
        for root, out in self.fact_readers:
            self.roots[root][out].facts.append(CHANGED_FACT)

    def choose_edit_file(self):
        """A plain 0644 file used (and winning) on exactly one machine."""
        r = self.rng
        users = {}
        for m in self.machine_names:
            for out, root in self.winners[m].items():
                users.setdefault((root, out), []).append(m)
        cands = sorted((root, out, ms[0]) for (root, out), ms in users.items()
                       if len(ms) == 1 and root.startswith("layers/") and root != "layers/_"
                       and self.roots[root][out].kind == "file"
                       and self.roots[root][out].mode == 0o644
                       and out not in self.private
                       and all(out not in self.roots[x] for x in self.roots if x != root))
        if not cands:
            cands = sorted((f"machines/{m}", out, m) for m in self.machine_names
                           for out, s in self.roots[f"machines/{m}"].items()
                           if s.kind == "file" and s.mode == 0o644
                           and self.winners[m][out] == f"machines/{m}")
        self.edit = r.choice(cands)

    def check(self):
        files, dirs = set(), set()
        for root, entries in self.roots.items():
            srcs = set()
            for out, s in entries.items():
                files.add(out)
                srcs.add(s.src_rel(out))
                parts = out.split("/")
                for i in range(1, len(parts)):
                    dirs.add("/".join(parts[:i]))
            # a root may not have both x and x.j2
            for out, s in entries.items():
                if s.kind == "tmpl":
                    assert out not in srcs, (root, out)
        clash = files & dirs
        assert not clash, f"paths that are both files and directories: {sorted(clash)[:5]}"
        assert sum(len(e) for e in self.roots.values()) == self.n, \
            (sum(len(e) for e in self.roots.values()), self.n)


# -- content -------------------------------------------------------------

def line_pool(rng):
    pool = []
    for _ in range(4000):
        k = rng.random()
        if k < 0.12:
            pool.append("# " + " ".join(rng.choice(STEMS) for _ in range(rng.randint(3, 9))))
        elif k < 0.18:
            pool.append("")
        elif k < 0.24:
            pool.append(f"[{rng.choice(STEMS)}.{rng.choice(KEYS)}]")
        else:
            pool.append(f"{rng.choice(KEYS)}_{rng.randint(1, 99)} = {rng.choice(VALUES)}")
    return pool


def fact_line(rng, fact):
    """A line using a fact: (jinja text, m4 text). In m4 a macro name must be
    a whole word, and never followed by `(`."""
    key = rng.choice(KEYS)
    prefix, suffix = rng.choice([("", ""), ("https://", "/api"), ("", ":8080"),
                                 ("'", "'"), ("\"", "\""), ("--", " --verbose")])
    if prefix == "'":  # m4 quote characters are not allowed
        prefix, suffix = "<", ">"
    j = f"{fact}_{key} = {prefix}{{{{ {fact} }}}}{suffix}"
    m = f"{fact}_{key} = {prefix}{m4_name(fact)}{suffix}"
    return j, m


def content(plan, pool, out, s):
    """(lab bytes, m4 bytes or None) of a regular source."""
    rng = random.Random(s.seed)
    head = f"# {out} - generated by gen_lab.py, source {s.seed}"
    lines = [head]
    size = len(head) + 1
    while size < s.size:
        ln = rng.choice(pool)
        lines.append(ln)
        size += len(ln) + 1
    if s.kind != "tmpl":
        return ("\n".join(lines) + "\n").encode(), None
    jl, ml = list(lines), list(lines)
    for f in s.facts:
        j, m = fact_line(rng, f)
        at = rng.randint(1, len(jl))
        jl.insert(at, j)
        ml.insert(at, m)
    return ("\n".join(jl) + "\n").encode(), ("\n".join(ml) + "\n").encode()


# -- writing -------------------------------------------------------------

def toml_value(v):
    return str(v) if isinstance(v, int) else json.dumps(v)


def write_lab_toml(plan, out_dir):
    lines = [
        "# Synthetic lab generated by benches/gen_lab.py",
        f"# {plan.n} sources, {len(plan.layer_names)} layers + _, {len(plan.machine_names)} machines",
        "",
        "[facts]",
    ]
    for k, v in GLOBAL_FACTS.items():
        lines.append(f"{k} = {toml_value(v)}")
    for m in plan.machine_names:
        lines += ["", f"[machines.{m}]",
                  f"host = \"{plan.machine_facts[m]['ip']}\"",
                  "layers = [" + ", ".join(json.dumps(l) for l in plan.machine_layers[m]) + "]",
                  "facts = { " + ", ".join(f"{k} = {toml_value(v)}" for k, v in plan.machine_facts[m].items()) + " }"]
    with open(os.path.join(out_dir, "lab.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")


def m4_defs(facts):
    return " ".join(f"-D{m4_name(k)}={v}" for k, v in facts.items())


def write_facts_mk(plan, out_dir):
    lines = ["# Facts for the m4 templates (generated by benches/gen_lab.py).",
             "# Every m4 rule depends on this file.", ""]
    for k, v in GLOBAL_FACTS.items():
        lines.append(f"{m4_name(k)} := {v}")
    lines.append("M4_GLOBAL := " + " ".join(f"-D{m4_name(k)}=$({m4_name(k)})" for k in GLOBAL_FACTS))
    for m in plan.machine_names:
        lines.append(f"M4_{m} := $(M4_GLOBAL) -D{m4_name('machine')}={m} {m4_defs(plan.machine_facts[m])}")
    with open(os.path.join(out_dir, "facts.mk"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_makefile(plan, out_dir):
    w = []
    w.append("# Classic make + m4 pipeline equivalent to lab.toml (generated by benches/gen_lab.py).")
    w.append("# Run with: make -r -j2   (builtin rules off; they only slow make down)")
    w.append("include facts.mk")
    w.append(".SUFFIXES:")
    w.append("MAKEFLAGS += --no-builtin-rules --no-builtin-variables")
    w.append("M4 := m4 -P")
    w.append(".PHONY: all " + " ".join(f"machine-{m}" for m in plan.machine_names))
    w.append("all: " + " ".join(f"machine-{m}" for m in plan.machine_names))
    for m in plan.machine_names:
        o = f"make-out/{m}"
        outs = sorted(plan.winners[m])
        dirs = set()
        for out in outs:
            parts = out.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
        w.append("")
        w.append(f"# machine {m}: " + " ".join(plan.stack(m)))
        w.append(f"machine-{m}: " + " ".join(f"{o}/{x}" for x in outs))
        for d in sorted(dirs):
            w.append(f"{o}/{d}:\n\tmkdir -p $@")
        for out in outs:
            root = plan.winners[m][out]
            s = plan.roots[root][out]
            parent = f" | {o}/{out.rsplit('/', 1)[0]}" if "/" in out else ""
            if s.kind == "tmpl":
                w.append(f"{o}/{out}: make-src/{root}/{out}.m4 facts.mk{parent}\n\t$(M4) $(M4_{m}) $< > $@")
            elif s.kind == "link":
                w.append(f"{o}/{out}: {root}/{out}{parent}\n\tcp -P -p --remove-destination $< $@")
            else:
                w.append(f"{o}/{out}: {root}/{out}{parent}\n\tcp -p $< $@")
    with open(os.path.join(out_dir, "Makefile"), "w") as f:
        f.write("\n".join(w) + "\n")


def write_sources(plan, out_dir):
    pool = line_pool(random.Random(1))
    made = set()

    def mkdir(d):
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)

    for root in sorted(plan.roots):
        for out, s in sorted(plan.roots[root].items()):
            p = os.path.join(out_dir, root, s.src_rel(out))
            mkdir(os.path.dirname(p))
            if s.kind == "link":
                os.symlink(s.target, p)
                continue
            data, m4 = content(plan, pool, out, s)
            with open(p, "wb") as f:
                f.write(data)
            os.chmod(p, s.mode)
            if m4 is not None:
                q = os.path.join(out_dir, "make-src", root, out + ".m4")
                mkdir(os.path.dirname(q))
                with open(q, "wb") as f:
                    f.write(m4)


def meta(plan):
    users = {}
    for m in plan.machine_names:
        for out, root in plan.winners[m].items():
            users.setdefault(root, set()).add(m)
    root, out, machine = plan.edit
    kinds = {"file": 0, "tmpl": 0, "link": 0}
    for entries in plan.roots.values():
        for s in entries.values():
            kinds[s.kind] += 1
    return {
        "sources": plan.n,
        "layers": len(plan.layer_names),
        "machines": plan.machine_names,
        "plain_files": kinds["file"],
        "templates": kinds["tmpl"],
        "symlinks": kinds["link"],
        "outputs_per_machine": {m: len(plan.winners[m]) for m in plan.machine_names},
        "outputs_total": sum(len(plan.winners[m]) for m in plan.machine_names),
        "templates_per_machine": {m: sum(1 for o, r in plan.winners[m].items()
                                         if plan.roots[r][o].kind == "tmpl")
                                  for m in plan.machine_names},
        "edit": {"source": f"{root}/{out}", "output": out, "machine": machine},
        "changed_fact": {
            "name": CHANGED_FACT,
            "value": GLOBAL_FACTS[CHANGED_FACT],
            "m4_name": m4_name(CHANGED_FACT),
            "templates": [f"{r}/{o}.j2" for r, o in plan.fact_readers],
            "outputs": sorted({(m, o) for m in plan.machine_names for r, o in plan.fact_readers
                               if plan.winners[m].get(o) == r}),
        },
    }


def generate(out_dir, n, n_layers=None, n_machines=8, seed=1, template_share=0.12):
    if n_layers is None:
        n_layers = default_layers(n)
    plan = Plan(n, n_layers, n_machines, seed, template_share)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    write_sources(plan, out_dir)
    write_lab_toml(plan, out_dir)
    write_facts_mk(plan, out_dir)
    write_makefile(plan, out_dir)
    md = meta(plan)
    with open(os.path.join(out_dir, "bench-meta.json"), "w") as f:
        json.dump(md, f, indent=1)
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to create (replaced if it exists)")
    ap.add_argument("--sources", "-n", type=int, required=True, help="number of sources N")
    ap.add_argument("--layers", "-l", type=int, help="layers besides _ (default N/250 in [4, 100])")
    ap.add_argument("--machines", "-m", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--template-share", type=float, default=0.12,
                    help="share of mode-0644 files that are templates (0.12 makes ~10%% of all sources)")
    a = ap.parse_args()
    md = generate(a.out, a.sources, a.layers, a.machines, a.seed, a.template_share)
    print(f"{a.out}: {md['sources']} sources ({md['plain_files']} plain, {md['templates']} templates, "
          f"{md['symlinks']} symlinks), {md['layers']} layers + _, {len(md['machines'])} machines, "
          f"{md['outputs_total']} outputs")


if __name__ == "__main__":
    main()
