# The make pipeline of a make + m4 style lab, as such a repo has it: per
# machine, the layer list from the `+ NAME` lines, every file and symlink of
# `layers/_`, the listed layers and `machines/NAME/`, copied with cp or
# rendered with m4, plus the symlinks of the link lists. Written to be
# reasonably efficient (one find per machine and run, facts flattened by
# jq only when they change, builtin rules off, directories as order-only
# prerequisites) so the benchmark compares lab with a fair make, not a
# straw man.
#
# usage (from the lab's root): make -f compat.mk [-j N] [OUT=build] [MACHINES="m1 m2"]
#                             [FACTS_EVERY_RUN=1]
#
# Like the pipelines it imitates, it has make's blind spots: a deleted or
# renamed source stays in OUT, link targets and mode-only changes are not
# picked up, m4_include'd files are not prerequisites.

MAKEFLAGS += -r
.SUFFIXES:
.DELETE_ON_ERROR:

HERE := $(dir $(lastword $(MAKEFILE_LIST)))
OUT ?= build
MACHINES ?= $(patsubst machines/%/,%,$(wildcard machines/*/))
PRELUDES := $(sort $(wildcard layers/_/usr/local/include/m4/*.m4))
M4 := m4 --fatal-warnings --prefix-builtins

all: $(addprefix local-,$(MACHINES))
.PHONY: all $(addprefix local-,$(MACHINES))

ifdef FACTS_EVERY_RUN
# Facts as -D arguments, flattened (jq) on every run, the way many such
# Makefiles do it; templates depend on the fact files.
$(foreach m,$(MACHINES),$(eval DEFS_$(m) := $(shell sh $(HERE)facts.sh $(m))))
$(foreach m,$(MACHINES),$(eval FACTS_$(m) := $(wildcard .facts/example*.env .facts/$(m).json .facts/$(m).env)))
else
# Facts as -D arguments, flattened (jq) into $(OUT)/.facts/NAME.defs only
# when a fact file changed; templates depend on that file and read it when
# their recipe runs.
$(foreach m,$(MACHINES),$(eval DEFS_$(m) = $$(file <$(OUT)/.facts/$(m).defs)))
$(foreach m,$(MACHINES),$(eval FACTS_$(m) := $(OUT)/.facts/$(m).defs))
# each machine's .defs depends on its own fact files and the shared ones
$(foreach m,$(MACHINES),$(eval $(OUT)/.facts/$(m).defs: $(wildcard .facts/example*.env .facts/$(m).json .facts/$(m).env)))
$(OUT)/.facts/%.defs: | $(OUT)/.facts
	sh $(HERE)facts.sh $* > $@
$(OUT)/.facts:
	mkdir -p $@
endif

# Per-machine rules, generated from the current sources on every run.
$(shell mkdir -p $(OUT)/.rules)
$(foreach m,$(MACHINES),$(shell sh $(HERE)rules.sh $(m) $(OUT) > $(OUT)/.rules/$(m).mk))
include $(MACHINES:%=$(OUT)/.rules/%.mk)
