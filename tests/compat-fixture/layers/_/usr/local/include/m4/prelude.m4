m4_dnl Shared macros: a prelude is passed to m4 before every template.
m4_define(`HEADER', `;; generated for ENV_MACHINE by lab -- do not edit')m4_dnl
