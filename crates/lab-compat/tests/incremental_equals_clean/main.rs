//! The promise make breaks, for both project styles: after any sequence of
//! edits, an incremental build (a fresh process, or a watch session)
//! produces exactly the tree a clean build of the same sources does.
//!
//! Both styles are opened the way `lab` opens a project
//! ([`lab_compat::open`] picks the style) and built by the engine's one
//! pipeline; each module holds one style's model of edits.

mod common;
mod make;
mod native;
