not a template either: prelude.m4 minus its extension is prelude
