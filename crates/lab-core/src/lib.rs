//! lab's shared vocabulary, at the bottom of the crate graph: content
//! [`Digest`]s, errors that point at a place in a file ([`Located`],
//! [`Diagnose`]), the layout of a project's `.lab/` directory ([`LabDir`]:
//! every path under it is built here only), the executor's exit codes
//! ([`ExecutorExit`]) and the words it reports units with
//! ([`UnitResultCode`], [`UnitState`]). Every other lab crate may
//! depend on this one; it depends on no lab crate and does no I/O.

mod digest;
mod exit;
mod layout;
mod located;
pub mod secrets;
mod unit;

pub use digest::{Digest, Hasher};
pub use exit::ExecutorExit;
pub use layout::{LabDir, LAB_DIR};
pub use located::{Diagnose, Located};
pub use unit::{ScopedUnit, UnitResultCode, UnitState};
