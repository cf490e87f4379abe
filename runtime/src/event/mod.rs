//! The audit event: a CloudEvents 1.0 envelope around the audit `data` block (SPEC §2.2).
//!
//! Every event passes the rules of SPEC §2.2 at ingest and again in the consumer, on one of two
//! paths: the typed reader ([`typed`]) for the common case, without a JSON tree, and
//! [`validate`] on a tree for everything else. Only [`validate`] reports errors: a
//! [`ValidEvent`], or one [`FieldError`] per offending field path.

mod id;
mod model;
pub mod normalize;
pub mod row;
mod traceparent;
pub(crate) mod typed;
mod validate;

pub use id::content_id;
pub use model::{FieldError, ValidEvent};
pub use traceparent::trace_id_of;
pub use validate::{Invalid, Limits, MAX_INDEXED_BYTES, validate};
