//! Multitune shared API types (filled in by the server issue).
#![warn(missing_docs)]
