m4_define(`UPPER', `m4_translit(`$1', `a-z', `A-Z')')m4_dnl
