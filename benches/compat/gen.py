#!/usr/bin/env python3
"""Generate a synthetic make-style lab (the layout docs/compat.md
describes) shaped like a real one: 8 machines,
40 layers, about 3,300 output files and links of which about 6% are
rendered m4 templates (about 210 renders), four preludes read by every
render (one with ~40 macro definitions), an m4_include'd partial,
m4_esyscmd calls in a third of the templates, link lists in every layer,
`!` links (to files of other layers, and to a 0600 secret under
/usr/local/opt that make's final mode fix-up opens to 0644), unit files
under /usr/local/lib/systemd, `.pin` files and symlinks.

usage: gen.py DIR [--seed N]
"""
import json
import os
import random
import sys

MACHINES = 8
LAYERS = 40


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def body(rng, lines):
    words = ["alpha", "beta", "gamma", "delta", "listen", "server", "cache", "timeout", "ssl", "worker"]
    return "".join(
        f"{rng.choice(words)}_{i} = {rng.randint(0, 99999)} {rng.choice(words)}\n" for i in range(lines)
    )


def template(rng, layer, i):
    t = [f"HEADER\n", f";; {layer} template {i}\n"]
    t.append("listen ENV_PORT\nserver_name ENV_MACHINE.ENV_DOMAIN\nrole ENV_ROLE\n")
    t.append("workers ENV_WORKERS peers ENV_PEERS\n")
    if i % 3 == 0:
        t.append("m4_include(`layers/_/usr/local/include/m4/partials/common.inc')m4_dnl\n")
    if i % 3 == 1:
        # a shell-out, as real templates do (deterministic, so both tools agree)
        t.append("upper m4_esyscmd(`printf %s 'ENV_MACHINE` | tr a-z A-Z')\n")
    t.append("MACRO07(x) MACRO21(y)\n")
    t.append(body(rng, rng.randint(5, 30)))
    return "".join(t)


def main():
    out = sys.argv[1]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--seed" else 1
    rng = random.Random(seed)
    layers = [f"L{n:02d}" for n in range(1, LAYERS + 1)]
    n_src = 0
    n_tmpl = 0

    # base layer: preludes, a partial, some files, a link list
    write(f"{out}/layers/_/usr/local/include/m4/00-header.m4",
          "m4_define(`HEADER', `;; generated for ENV_MACHINE -- do not edit')m4_dnl\n")
    write(f"{out}/layers/_/usr/local/include/m4/10-upper.m4",
          "m4_define(`UPPER', `m4_translit(`$1', `a-z', `A-Z')')m4_dnl\n")
    write(f"{out}/layers/_/usr/local/include/m4/20-macros.m4",
          "m4_dnl shared macros, read by every render\n" + "".join(
              f"m4_define(`MACRO{i:02d}', `macro {i} of ENV_MACHINE: $1')m4_dnl\n" for i in range(40)))
    write(f"{out}/layers/_/usr/local/include/m4/30-lists.m4",
          "m4_define(`FOREACH', `m4_ifelse(`$2', `', `', `$1(`$2')FOREACH(`$1', m4_shift(m4_shift($@)))')')m4_dnl\n")
    write(f"{out}/layers/_/usr/local/include/m4/partials/common.inc",
          "common ENV_MACHINE ENV_DOMAIN\n")
    write(f"{out}/shared/secret.key", "s3cret\n", 0o600)
    n_src += 5
    for i in range(80):
        write(f"{out}/layers/_/etc/base/file{i:02d}.conf", body(rng, rng.randint(5, 60)))
        n_src += 1
    for i in range(6):
        write(f"{out}/layers/_/etc/base/tmpl{i}.m4.conf", template(rng, "_", i))
        n_src += 1
        n_tmpl += 1
    write(f"{out}/layers/_/usr/local/opt/initd/links/base.txt",
          "# base links\n/etc/base/sh-link /bin/sh\n/usr/local/bin/python /usr/bin/python3\n"
          "/etc/localtime /usr/share/zoneinfo/UTC\n")
    for i in range(8):
        write(f"{out}/layers/_/usr/local/lib/systemd/system/base{i}.service",
              f"[Service]\nExecStart=/bin/true {i}\n", 0o600 if i % 2 else 0o644)
    n_src += 9

    # 40 layers, 22 sources each: ~2 templates, a symlink, sometimes a
    # `!` link, a `.pin`, a service with `@`, a link list
    for li, layer in enumerate(layers):
        d = f"{out}/layers/{layer}"
        k = 0
        for i in range(26):
            write(f"{d}/etc/{layer}/conf{i:02d}.conf", body(rng, rng.randint(5, 80)))
            k += 1
        write(f"{d}/usr/local/bin/{layer}-run", "#!/bin/sh\nexec true\n", 0o755)
        k += 1
        for i in range(2 + (li % 2)):
            name = f".m4.{layer.lower()}rc" if i == 0 else f"t{i}.m4.conf"
            where = f"{d}/root/{name}" if i == 0 else f"{d}/etc/{layer}/{name}"
            write(where, template(rng, layer, i))
            k += 1
            n_tmpl += 1
        os.symlink("conf00.conf", f"{d}/etc/{layer}/current.conf")
        k += 1
        write(f"{d}/etc/systemd/system/{layer.lower()}@.service",
              f"[Service]\nExecStart=/usr/local/bin/{layer}-run %i\n")
        k += 1
        if li % 4 == 0:
            os.makedirs(f"{d}/srv/{layer}", exist_ok=True)
            os.symlink(f"../../etc/{layer}/conf01.conf", f"{d}/srv/{layer}/!conf01.copy")
            write(f"{d}/srv/{layer}/.pin", "")
            k += 2
        # `!` links: a file of another layer, and the secret under
        # /usr/local/opt (0644 there after make's final mode fix-up)
        other = layers[(li + 1) % LAYERS]
        os.symlink(f"../../../{other}/etc/{other}/conf02.conf", f"{d}/etc/{layer}/!from-{other}.conf")
        os.makedirs(f"{d}/usr/local/opt/{layer}", exist_ok=True)
        os.symlink("../../../../../../shared/secret.key", f"{d}/usr/local/opt/{layer}/!secret.key")
        write(f"{d}/usr/local/lib/systemd/system/{layer.lower()}.service",
              f"[Service]\nExecStart=/usr/local/bin/{layer}-run\n")
        k += 3
        write(f"{d}/usr/local/opt/initd/links/{layer}.txt",
              f"# {layer}\n/usr/local/bin/{layer.lower()} /usr/bin/env\n"
              f"/etc/{layer}/enabled.conf   ../{layer}/conf00.conf\n"
              f"/usr/local/lib/systemd/system/multi-user.target.wants/{layer.lower()}.service "
              f"/usr/local/lib/systemd/system/{layer.lower()}.service\n")
        k += 1
        n_src += k

    # 8 machines: layer lists, a few files, a template, a link list; facts
    inventory = {}
    for mi in range(1, MACHINES + 1):
        m = f"m{mi}"
        d = f"{out}/machines/{m}"
        # as in real labs, some layers are common: L01 everywhere, L02 on
        # every other machine
        common = ["L01"] + (["L02"] if mi % 2 else [])
        chosen = common + rng.sample(layers[2:], 8 - len(common))
        write(f"{d}/usr/local/opt/initd/layers/main.txt",
              "# layers\n" + "".join(f"+ {l}\n" for l in chosen[:5]))
        write(f"{d}/usr/local/opt/initd/layers/extra.txt",
              "".join(f"+ {l}\n" for l in chosen[5:]) + "- retired\n")
        write(f"{d}/usr/local/opt/initd/links/machine.txt", f"/etc/{m}-passwd /etc/passwd\n")
        write(f"{d}/etc/hostname", f"{m}\n")
        write(f"{d}/etc/{m}.m4.conf", template(rng, m, 0))
        for i in range(3):
            write(f"{d}/etc/{m}/local{i}.conf", body(rng, 10))
        n_src += 8
        n_tmpl += 1
        inventory[m] = {"host": f"10.0.0.{mi}", "user": "root", "options": []}
        write(f"{out}/.facts/{m}.json", json.dumps({
            "ENV_PORT": 8000 + mi, "ENV_WORKERS": mi % 4 + 1,
            "ENV_PEERS": [f"m{j}" for j in range(1, MACHINES + 1) if j != mi],
            "ENV_TLS": mi % 2 == 0, "ENV_EXTRA": {"zone": "a", "n": mi},
        }, indent=1) + "\n")
        write(f"{out}/.facts/{m}.env", f"ENV_ROLE='role-{mi % 3}'\n")
    write(f"{out}/.facts/example.env", "# shared\nENV_DOMAIN=example.org\nENV_ROLE=generic\n")
    write(f"{out}/inventory.json", json.dumps(inventory, indent=1) + "\n")
    print(f"{out}: {MACHINES} machines, {LAYERS} layers, {n_src} sources, {n_tmpl} templates")


main()
