# makelib-compat/lab.mk: keep typing `make local` and `make sync` in a
# make + m4 style lab while lab does the work.
#
# In the lab's Makefile, replace the include of the old make library with
#
#     include makelib-compat/lab.mk
#
# then:
#
#     make local MACHINE=web1     # lab build --machine web1
#     make local                  # lab build (every machine)
#     make sync MACHINE=web1      # lab sync --machine web1
#     make sync                   # lab sync --all
#     make facts MACHINE=web1     # lab facts --machine web1
#     make compare MACHINE=web1 MAKE_OUT=build   # diff lab's tree with make's
#
# MACHINE may name several machines: MACHINE="web1 db1".
# Variables: LAB (the lab binary), LAB_FLAGS (global options such as -q),
# LAB_BUILD_FLAGS, LAB_SYNC_FLAGS.

LAB ?= lab
LAB_FLAGS ?=
LAB_BUILD_FLAGS ?=
LAB_SYNC_FLAGS ?=
MACHINE ?=
MAKE_OUT ?= build

lab_machines = $(foreach m,$(MACHINE),--machine $(m))

.PHONY: local sync facts compare lab-clean

local:
	$(LAB) $(LAB_FLAGS) build $(lab_machines) $(LAB_BUILD_FLAGS)

sync:
	$(LAB) $(LAB_FLAGS) sync $(if $(MACHINE),$(lab_machines),--all) $(LAB_SYNC_FLAGS)

facts:
	$(if $(MACHINE),,$(error facts: set MACHINE=NAME))
	$(foreach m,$(MACHINE),$(LAB) $(LAB_FLAGS) facts --machine $(m);)

# Build with lab, copy its trees to .lab/compare/, and diff them with the
# trees the old make pipeline left in $(MAKE_OUT)/ (paths, modes, link
# targets, contents).
compare:
	$(LAB) $(LAB_FLAGS) build -q $(lab_machines) --out .lab/compare
	@set -e; for m in $(or $(MACHINE),$(notdir $(wildcard machines/*))); do \
	  echo "== $$m"; \
	  diff -r --no-dereference $(MAKE_OUT)/$$m .lab/compare/$$m; \
	  (cd $(MAKE_OUT)/$$m && find . -printf '%p %y %m %l\n' | sort) > .lab/compare/.$$m.make-modes; \
	  (cd .lab/compare/$$m && find . -printf '%p %y %m %l\n' | sort) > .lab/compare/.$$m.lab-modes; \
	  diff .lab/compare/.$$m.make-modes .lab/compare/.$$m.lab-modes; \
	done; echo "identical"

lab-clean:
	$(LAB) $(LAB_FLAGS) clean
